//! `sandhost logs`: a sandbox's combined stdout and stderr, from the Logs stream.
//!
//! The Logs RPC sends the log's bytes from its start, or from a time (`since`), and, following, as
//! they are written, until the sandbox exits; it takes no offset and sends no times. So:
//!
//! - `--since WHEN`: what was written at or after WHEN, an RFC 3339 time with its zone
//!   (`2026-01-02T15:04:05Z`, `...+02:00`) or a duration before now (`10m`, `1h30m`), as
//!   `docker logs --since` takes it. The node dates its logs to about a second (the `since` of
//!   `LogsRequest` in the proto says exactly how), so lines written up to about a second before
//!   WHEN may be printed too; none written at or after it is left out. A WHEN older than what the
//!   node keeps prints what is kept, and says on stderr how much was dropped, as without it. A
//!   WHEN to come prints nothing; with `-f`, the node waits for it, then follows.
//! - `--tail N`: the last N lines of the log (with `--since`, of what was written since) as it is
//!   when the command starts (a last line without its newline counts). With `-f`, the log is read
//!   once to its end, the tail printed, and the follow stream (from the same WHEN, so from the
//!   same offset) then skips those bytes: the log only grows, so nothing is printed twice or lost,
//!   unless the node drops its oldest bytes between the two reads (a log written faster than the
//!   command runs).
//! - `--timestamps` (with `-f` only): each line is prefixed with the time this client *received*
//!   its first byte (RFC 3339, UTC, milliseconds), not the time it was written: the node dates the
//!   bytes of a log only to about a second, for `since`, and the stream does not carry those
//!   times. The lines already in the log when the command starts are stamped with the time they
//!   were read.

use std::io::{self, Write as _};
use std::time::SystemTime;

use sandhost_proto::v1 as pb;

use super::client::{Client, ClientError};
use super::exit::Outcome;
use super::json::JsonPrinter;
use super::{Target, parse};

/// The flags of `sandhost logs`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// The sandbox.
    id: String,
    /// Keep printing as it is written, until the sandbox exits.
    #[arg(short, long)]
    follow: bool,
    /// Print only the last N lines of what is in the log now (of what was written since WHEN, with
    /// --since; then follow, with -f).
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
    /// Print only what was written at or after WHEN: an RFC 3339 time with its zone
    /// (2026-01-02T15:04:05Z, 2026-01-02T17:04:05+02:00) or a duration before now (10m, 1h30m).
    /// The node dates its logs to about a second: lines from up to a second before may come too.
    /// A WHEN to come prints nothing, or with -f waits for it.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Prefix each line with the time this client received it (not when it was written: the node
    /// dates its logs only to about a second, and does not send those times). Needs -f.
    #[arg(long, requires = "follow", conflicts_with = "json")]
    timestamps: bool,
    /// Print each piece of the stream as a JSON reply, one per line (the bytes in base64).
    #[arg(long)]
    json: bool,
}

pub(crate) async fn logs(client: &mut Client, args: &LogsArgs) -> Result<Outcome, ClientError> {
    let since = args
        .since
        .as_deref()
        .map(|text| parse::since(text, SystemTime::now()))
        .transpose()
        .map_err(|e| ClientError::usage("--since", e))?
        .map(prost_types::Timestamp::from);
    let mut sink = Sink::new(args)?;
    let mut skip = 0;
    if let Some(lines) = args.tail {
        let backlog = read_to_end(client, &args.id, since).await?;
        sink.write(last_lines(&backlog, lines), 0, SystemTime::now())?;
        if !args.follow {
            return Ok(Outcome::Done);
        }
        skip = backlog.len();
    }
    let request = pb::LogsRequest { id: args.id.clone(), follow: args.follow, since };
    let mut stream = client.sandboxes.logs(request).await?.into_inner();
    while let Some(chunk) = stream.message().await? {
        // What --tail already printed is skipped, and so is what was dropped before it.
        let dropped = if skip > 0 { 0 } else { chunk.dropped_bytes };
        let data = chunk.data.get(skip..).unwrap_or_default();
        skip = skip.saturating_sub(chunk.data.len());
        sink.write(data, dropped, SystemTime::now())?;
    }
    Ok(Outcome::Done)
}

/// The whole log as it is now (what was written since `since`, with one).
async fn read_to_end(
    client: &mut Client,
    id: &str,
    since: Option<prost_types::Timestamp>,
) -> Result<Vec<u8>, ClientError> {
    let request = pb::LogsRequest { id: id.to_owned(), follow: false, since };
    let mut stream = client.sandboxes.logs(request).await?.into_inner();
    let mut log = Vec::new();
    while let Some(chunk) = stream.message().await? {
        log.extend_from_slice(&chunk.data);
    }
    Ok(log)
}

/// The last `count` lines of `log`; a last line without its newline counts as one.
fn last_lines(log: &[u8], count: usize) -> &[u8] {
    if count == 0 {
        return &[];
    }
    let body = log.strip_suffix(b"\n").unwrap_or(log);
    let mut seen = 0;
    for (at, byte) in body.iter().enumerate().rev() {
        if *byte == b'\n' {
            seen += 1;
            if seen == count {
                return &log[at + 1..];
            }
        }
    }
    log
}

/// Where the log's bytes go: raw, stamped by line, or as JSON replies.
#[derive(Debug)]
enum Sink {
    Raw,
    Stamped { at_line_start: bool },
    Json(JsonPrinter),
}

impl Sink {
    fn new(args: &LogsArgs) -> Result<Self, ClientError> {
        Ok(if args.json {
            Self::Json(JsonPrinter::new()?)
        } else if args.timestamps {
            Self::Stamped { at_line_start: true }
        } else {
            Self::Raw
        })
    }

    /// Writes `data`, received at `now` after `dropped` bytes the node no longer keeps, and flushes
    /// it. What was dropped is said on stderr (in the reply, with `--json`): the output is never
    /// passed off as the whole log.
    fn write(&mut self, data: &[u8], dropped: u64, now: SystemTime) -> Result<(), ClientError> {
        if data.is_empty() && dropped == 0 {
            return Ok(());
        }
        if dropped > 0 && !matches!(self, Self::Json(_)) {
            eprintln!(
                "sandhost: {dropped} bytes of this log were dropped before what follows (the node keeps the newest)"
            );
        }
        let mut stdout = io::stdout().lock();
        match self {
            Self::Raw => stdout.write_all(data)?,
            Self::Stamped { at_line_start } => stamp_lines(&mut stdout, data, now, at_line_start)?,
            Self::Json(printer) => {
                let reply = pb::LogsResponse { data: data.to_vec(), dropped_bytes: dropped };
                let line = printer.line(&reply)?;
                writeln!(stdout, "{line}")?;
            }
        }
        stdout.flush()?;
        Ok(())
    }
}

/// Writes `data` with `now` before each line that begins in it; `at_line_start` carries over from
/// the previous piece.
fn stamp_lines(
    out: &mut impl io::Write,
    data: &[u8],
    now: SystemTime,
    at_line_start: &mut bool,
) -> io::Result<()> {
    let stamp = humantime::format_rfc3339_millis(now).to_string();
    for line in data.split_inclusive(|b| *b == b'\n') {
        if *at_line_start {
            write!(out, "{stamp} ")?;
        }
        out.write_all(line)?;
        *at_line_start = line.ends_with(b"\n");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_tail_counts_lines_from_the_end() {
        let log = b"one\ntwo\nthree\n";
        assert_eq!(last_lines(log, 0), b"");
        assert_eq!(last_lines(log, 1), b"three\n");
        assert_eq!(last_lines(log, 2), b"two\nthree\n");
        assert_eq!(last_lines(log, 3), log);
        assert_eq!(last_lines(log, 10), log);
        // A last line without its newline is a line.
        assert_eq!(last_lines(b"one\ntwo", 1), b"two");
        assert_eq!(last_lines(b"one\ntwo", 2), b"one\ntwo");
        assert_eq!(last_lines(b"", 3), b"");
        assert_eq!(last_lines(b"\n\n", 1), b"\n");
    }

    #[test]
    fn each_line_gets_the_time_its_first_byte_arrived() {
        let first = SystemTime::UNIX_EPOCH + Duration::from_millis(1_500);
        let second = first + Duration::from_secs(1);
        let mut out = Vec::new();
        let mut at_line_start = true;
        stamp_lines(&mut out, b"a\nb", first, &mut at_line_start).expect("writes");
        stamp_lines(&mut out, b"c\nd\n", second, &mut at_line_start).expect("writes");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "1970-01-01T00:00:01.500Z a\n1970-01-01T00:00:01.500Z bc\n1970-01-01T00:00:02.500Z d\n"
        );
        assert!(at_line_start);
    }
}
