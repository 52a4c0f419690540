//! Reading and writing one frame per QUIC stream. The reader takes the header first and checks
//! the declared length against the limits before allocating the body buffer; it then requires
//! the stream to end right after the body.

use crate::codec::{decode_body, decode_header, Limits, HEADER_LEN};
use crate::error::{Error, Result};
use crate::messages::Message;

/// Read exactly one frame from `recv`, then expect the end of the stream.
pub(crate) async fn read_frame(recv: &mut quinn::RecvStream, limits: &Limits) -> Result<Message> {
    let mut header = [0u8; HEADER_LEN];
    read_exact(recv, &mut header).await?;
    let h = decode_header(&header, limits)?;
    let mut body = vec![0u8; h.body_len];
    read_exact(recv, &mut body).await?;
    let mut probe = [0u8; 1];
    match recv.read(&mut probe).await {
        Ok(None) => {}
        Ok(Some(0)) => {}
        Ok(Some(_)) => {
            return Err(Error::Malformed {
                what: "stream",
                detail: "bytes after the frame".into(),
            });
        }
        Err(e) => return Err(Error::transport(e)),
    }
    decode_body(&h, &body, limits)
}

async fn read_exact(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> Result<()> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(quinn::ReadExactError::FinishedEarly(got)) => Err(Error::Truncated {
            needed: buf.len(),
            got,
        }),
        Err(quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code))) => {
            Err(Error::PeerRejected {
                code: code.into_inner(),
            })
        }
        Err(quinn::ReadExactError::ReadError(e)) => Err(Error::transport(e)),
    }
}

/// Write `frame` and finish the stream.
pub(crate) async fn write_frame(send: &mut quinn::SendStream, frame: &[u8]) -> Result<()> {
    send.write_all(frame).await.map_err(Error::transport)?;
    send.finish().map_err(Error::transport)?;
    Ok(())
}
