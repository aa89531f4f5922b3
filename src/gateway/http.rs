//! What both NICEPAY clients do with reqwest alike: name a failed exchange and read an answer
//! body within a size limit.

use super::Transport;

/// What a failed exchange means: nothing sent (connect), no answer in time, or a broken one.
pub(crate) fn transport_of(e: &reqwest::Error) -> Transport {
    if e.is_connect() {
        Transport::ConnectFailed
    } else if e.is_timeout() {
        Transport::TimedOut
    } else {
        Transport::ConnectionLost
    }
}

/// The error with its chain of causes: reqwest hides the useful part in the sources.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Reads an answer body chunk by chunk, giving up (`Oversized`: the request was sent, the
/// outcome is unknown) once it passes `cap` bytes; a declared longer length is refused unread.
/// The error is the failure and its description, for the caller's own error type.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, (Transport, String)> {
    let too_long = |what: String| {
        (
            Transport::Oversized,
            format!("the answer is {what}, over the {cap}-byte limit; the outcome is unknown"),
        )
    };
    if let Some(len) = response.content_length()
        && len > cap as u64
    {
        return Err(too_long(format!("{len} bytes")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| (transport_of(&e), describe(&e)))?
    {
        if body.len() + chunk.len() > cap {
            return Err(too_long(format!(
                "more than {} bytes",
                body.len() + chunk.len()
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
