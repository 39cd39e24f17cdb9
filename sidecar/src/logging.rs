//! Logs that cannot leak a key.
//!
//! Careful call sites are not enough: a vendor error body, a database error
//! or a third-party crate's debug line can carry a key. So redaction sits at
//! the very end, on the bytes about to be written: every formatted line goes
//! through [`byok_core::redact::redact`], whatever produced it. Panic
//! messages take the same path through a panic hook.

use std::io::{self, Write};

use byok_core::redact::redact;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;
use zeroize::Zeroize;

use crate::config::LogFormat;

/// Wraps a [`MakeWriter`] so that every event is redacted before it is written.
#[derive(Clone)]
pub struct RedactingMakeWriter<M> {
    inner: M,
}

impl<M> RedactingMakeWriter<M> {
    pub fn new(inner: M) -> Self {
        RedactingMakeWriter { inner }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingMakeWriter<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            inner: self.inner.make_writer(),
            buf: Vec::new(),
        }
    }
}

/// Buffers one event and writes it redacted when dropped (tracing creates
/// one writer per event), or on a flush that ends a line. Buffering the
/// whole event means a key split across several `write` calls is still
/// seen whole by the redactor.
pub struct RedactingWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> RedactingWriter<W> {
    fn emit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = {
            let text = String::from_utf8_lossy(&self.buf);
            self.inner.write_all(redact(&text).as_bytes())
        };
        // The unredacted bytes may hold a key: wipe them, not just drop them.
        self.buf.zeroize();
        result
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.ends_with(b"\n") {
            self.emit()?;
        }
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = self.emit();
        let _ = self.inner.flush();
    }
}

/// Installs the global subscriber (redacting, to stderr) and a panic hook
/// that redacts panic messages.
pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("bad log filter: {e}"))?;
    let writer = RedactingMakeWriter::new(io::stderr);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))?;
    install_panic_hook();
    Ok(())
}

/// Replaces the default panic output (which bypasses tracing) with a
/// redacted log line.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = match info.payload().downcast_ref::<&str>() {
            Some(s) => (*s).to_owned(),
            None => info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "panic".to_owned()),
        };
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(location, "panic: {}", redact(&message));
        eprintln!("byok-sidecar panicked at {location}: {}", redact(&message));
    }));
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer that appends to a shared buffer, for capturing output.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    fn key() -> String {
        byok_core::samples::sample_key("anthropic", 5)
    }

    /// A 12-character run from the middle of the key.
    fn middle(k: &str) -> &str {
        &k[40..52]
    }

    #[test]
    fn split_writes_are_redacted_whole() {
        let cap = Capture::default();
        let make = RedactingMakeWriter::new(cap.clone());
        let k = key();
        {
            let mut w = make.make_writer();
            w.write_all(b"vendor said: ").unwrap();
            w.write_all(&k.as_bytes()[..30]).unwrap();
            w.write_all(&k.as_bytes()[30..]).unwrap();
            w.write_all(b" bye\n").unwrap();
        }
        let out = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
        assert!(!out.contains(middle(&k)), "{out}");
        assert!(
            out.contains("vendor said: …") && out.ends_with("bye\n"),
            "{out}"
        );
    }

    #[test]
    fn tracing_events_in_both_formats_are_redacted() {
        for json in [false, true] {
            let cap = Capture::default();
            let builder = tracing_subscriber::fmt()
                .with_writer(RedactingMakeWriter::new(cap.clone()))
                .with_ansi(false);
            let k = key();
            let run = || {
                tracing::warn!(body = %format!("{{\"error\":\"bad key {k}\"}}"), "probe failed for {k}");
                tracing::info!(key = ?k, "debug-formatted field");
            };
            if json {
                tracing::subscriber::with_default(builder.json().finish(), run);
            } else {
                tracing::subscriber::with_default(builder.finish(), run);
            }
            let out = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
            assert!(out.contains("probe failed"), "{out}");
            assert!(!out.contains(middle(&k)), "json={json}: {out}");
            assert!(out.contains(&format!("…{}", &k[k.len() - 4..])), "{out}");
        }
    }

    #[test]
    fn key_free_text_passes_unchanged() {
        let cap = Capture::default();
        let make = RedactingMakeWriter::new(cap.clone());
        make.make_writer()
            .write_all("plain line with sk-learn and ünïcode\n".as_bytes())
            .unwrap();
        assert_eq!(
            cap.0.lock().unwrap().as_slice(),
            "plain line with sk-learn and ünïcode\n".as_bytes()
        );
    }
}
