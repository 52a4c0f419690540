# The two commands: `make up` runs the embedded default, `make test` runs the test suite.
# Both install what a fresh machine lacks (cmake, for pingora's zlib-ng) before running cargo.

.PHONY: up test deps bench

deps:
	@scripts/ensure-deps.sh

up: deps
	cargo run --release -- up

test: deps
	cargo test --workspace --lib --bins --tests --no-fail-fast
