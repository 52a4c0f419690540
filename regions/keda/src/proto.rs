//! The messages, server and client generated from KEDA's `externalscaler.proto` (package
//! `externalscaler`) by the build script.

tonic::include_proto!("externalscaler");
