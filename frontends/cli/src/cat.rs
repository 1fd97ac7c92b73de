//! `cairn cat PATH...`: file contents to stdout.
//!
//! Each file is read in [`PIECE`] (4 MiB) pieces with [`File::read_at`],
//! two in flight, so the next piece is on its way while one is written to
//! `tokio::io::stdout()`; pieces are written in order. Memory stays at two
//! pieces whatever the file size. There is no progress bar: stdout is the
//! data and a pipe's reader sees its own progress.
//!
//! Like cat(1), a file that cannot be read is reported and the next one is
//! printed; the command exits 1 at the end. A closed stdout (`cairn cat f
//! | head`) stops at once and silently, with status 1.

use cairn_client::{Client, File};
use futures::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::data::DataArgs;
use crate::report::{self, Context, Reported};
use crate::transfer::io_text;

/// Bytes per read.
pub const PIECE: usize = 4 << 20;
/// Reads in flight.
const IN_FLIGHT: usize = 2;

/// Flags of `cairn cat`.
#[derive(Debug, clap::Args)]
pub struct CatArgs {
    /// Client flags (cache).
    #[command(flatten)]
    pub data: DataArgs,
    /// Cairn files to print, in order (absolute paths).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
}

/// Why printing one file stopped.
enum CatError {
    /// The file could not be read: report it and go on.
    Source(anyhow::Error),
    /// stdout failed: stop.
    Out(std::io::Error),
}

/// `cairn cat PATH...`.
///
/// # Errors
/// [`Reported`] when a file could not be read (each was printed) or stdout
/// was closed; an error when stdout failed otherwise.
pub async fn cat(c: &Client, paths: &[String]) -> anyhow::Result<()> {
    let mut out = tokio::io::stdout();
    let mut failed = false;
    for p in paths {
        match cat_one(c, p, &mut out).await {
            Ok(()) => {}
            Err(CatError::Source(e)) => {
                report::print(&e);
                failed = true;
            }
            Err(CatError::Out(e)) => return stdout_failed(&e),
        }
    }
    if let Err(e) = out.flush().await {
        return stdout_failed(&e);
    }
    if failed { Err(Reported.into()) } else { Ok(()) }
}

fn stdout_failed(e: &std::io::Error) -> anyhow::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        // The reader has all it wanted; nothing to tell it.
        return Err(Reported.into());
    }
    Err(anyhow::anyhow!("cat: writing to stdout: {}", io_text(e)))
}

async fn cat_one<W: AsyncWrite + Unpin>(
    c: &Client,
    path: &str,
    out: &mut W,
) -> Result<(), CatError> {
    let f = c
        .open_read(path)
        .await
        .op("cat", path)
        .map_err(CatError::Source)?;
    let r = copy_out(&f, path, out).await;
    if let Err(e) = f.close().await {
        tracing::debug!(error = %e, "closing a read handle");
    }
    r
}

async fn copy_out<W: AsyncWrite + Unpin>(
    f: &File,
    path: &str,
    out: &mut W,
) -> Result<(), CatError> {
    let len = f.len();
    let mut pieces = futures::stream::iter((0..len).step_by(PIECE))
        .map(|at| async move {
            let n = usize::try_from(len - at).unwrap_or(PIECE).min(PIECE);
            f.read_at(at, n).await
        })
        .buffered(IN_FLIGHT);
    while let Some(piece) = pieces.next().await {
        let data = piece.op("cat", path).map_err(CatError::Source)?;
        out.write_all(&data).await.map_err(CatError::Out)?;
    }
    Ok(())
}
