//! JSON lines, bounded: every socket of connector (the agent's control
//! channel, the daemon's control socket) carries one JSON message per line,
//! read with tokio-util's line codec under a length limit so that a peer
//! cannot make the reader buffer more than that.

use std::io;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

/// Why a line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("line longer than {max} bytes")]
    TooLong { max: usize },
    #[error("line is not UTF-8")]
    NotUtf8,
    #[error("{0}")]
    Io(io::Error),
}

/// Reads lines of at most `max` bytes (newline excluded) from `R`.
pub struct LineReader<R> {
    framed: FramedRead<R, LinesCodec>,
    max: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(read: R, max: usize) -> Self {
        LineReader {
            framed: FramedRead::new(read, LinesCodec::new_with_max_length(max)),
            max,
        }
    }

    /// The next line without its newline (a last line may lack one), or
    /// `None` at the end of the stream. An error ends the stream (the rest
    /// of a long line is never read): callers answer and close.
    pub async fn next_line(&mut self) -> Result<Option<String>, LineError> {
        match self.framed.next().await {
            None => Ok(None),
            Some(Ok(line)) => Ok(Some(line)),
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                Err(LineError::TooLong { max: self.max })
            }
            // The codec reports bytes that are not UTF-8 as InvalidData.
            Some(Err(LinesCodecError::Io(e))) if e.kind() == io::ErrorKind::InvalidData => {
                Err(LineError::NotUtf8)
            }
            Some(Err(LinesCodecError::Io(e))) => Err(LineError::Io(e)),
        }
    }
}

/// `message` as one line of JSON. serde_json escapes control characters, so
/// the text holds no newline of its own.
pub fn encode<T: Serialize>(message: &T) -> Result<String, serde_json::Error> {
    let mut text = serde_json::to_string(message)?;
    text.push('\n');
    Ok(text)
}

/// Writes `message` as one line.
pub async fn write<W, T>(write: &mut W, message: &T) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let text = encode(message).map_err(io::Error::other)?;
    write.write_all(text.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Result<String, String>> {
        let mut reader = LineReader::new(input, max);
        let mut out = Vec::new();
        loop {
            match reader.next_line().await {
                Ok(None) => return out,
                Ok(Some(line)) => out.push(Ok(line)),
                Err(e) => out.push(Err(e.to_string())),
            }
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn lines_up_to_the_limit_are_read_a_longer_one_ends_the_stream() {
        let got = block_on(lines(b"abcd\nxy\nabcde\nxy", 4));
        assert_eq!(
            got,
            vec![
                Ok("abcd".to_owned()),
                Ok("xy".to_owned()),
                Err("line longer than 4 bytes".to_owned()),
            ]
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_named() {
        let got = block_on(lines(b"\xff\xfe\n", 64));
        assert_eq!(got, vec![Err("line is not UTF-8".to_owned())]);
    }

    #[test]
    fn encoded_messages_are_one_line() {
        let text = encode(&serde_json::json!({"a": "x\ny"})).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        assert!(text.ends_with('\n'));
    }

    proptest! {
        /// Whatever arrives, every line handed out is within the limit and
        /// holds no newline.
        #[test]
        fn no_line_handed_out_is_over_the_limit(
            input in proptest::collection::vec(any::<u8>(), 0..2048),
            max in 1usize..64,
        ) {
            for line in block_on(lines(&input, max)).into_iter().flatten() {
                prop_assert!(line.len() <= max);
                prop_assert!(!line.contains('\n'));
            }
        }
    }
}
