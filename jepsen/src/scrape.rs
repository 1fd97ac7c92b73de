//! Reading a process's Prometheus page (`--metrics-listen`) in tests.

use anyhow::{Context, Result, ensure};

/// The body of `GET /metrics` at `addr`.
///
/// # Errors
/// Nothing listens there, or the answer is not a 200.
pub async fn metrics_page(addr: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await?;
    let mut page = String::new();
    s.read_to_string(&mut page).await?;
    let (head, body) = page.split_once("\r\n\r\n").context("an HTTP reply")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{addr}: {head}");
    Ok(body.to_string())
}

/// The value of the sample written exactly `name` (labels included, as
/// the page spells them) on `page`.
pub fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
