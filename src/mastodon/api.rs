//! Mastodon's admin API for domain blocks (`/api/v1/admin/domain_blocks`),
//! as its controller and docs describe it (facts in docs/blocks.md): pages
//! linked by `Link` headers, 422 with the block in place when a domain (or a
//! parent of it) is already blocked, 403 when the token lacks the scope, 429
//! with `X-RateLimit-Reset` when the rate limit is spent.
//!
//! Requests go through tusk's one HTTP client ([`crate::http::client`]).

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::{Deserialize, Serialize};

use crate::error::TuskError;
use crate::mastodon::blocklist::{BlockRule, Severity};

/// The scopes the admin API checks, for error messages.
pub const READ_SCOPE: &str = "admin:read:domain_blocks";
pub const WRITE_SCOPE: &str = "admin:write:domain_blocks";

/// Mastodon caps `limit` at twice its default of 100.
const PAGE_LIMIT: u32 = 200;
/// Waits for a rate limit to reset; Mastodon's windows are at most an hour.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(3600);
/// How often one request is repeated after a 429.
const RATE_LIMIT_TRIES: u32 = 5;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A block as the server holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteBlock {
    pub id: String,
    #[serde(flatten)]
    pub rule: BlockRule,
}

/// What creating a block came to.
#[derive(Debug)]
pub enum Created {
    New(RemoteBlock),
    /// 422: the domain or a parent of it was blocked already (by someone
    /// else since the listing, or by a parent-domain block).
    Exists {
        message: String,
        existing: Option<RemoteBlock>,
    },
}

/// A session with one server's admin API.
pub struct AdminApi {
    http: reqwest::Client,
    base: Url,
    token: String,
}

#[derive(Serialize)]
struct BlockParams<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<&'a str>,
    severity: Severity,
    reject_media: bool,
    reject_reports: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    private_comment: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_comment: Option<&'a str>,
    obfuscate: bool,
}

impl<'a> BlockParams<'a> {
    fn of(rule: &'a BlockRule, with_domain: bool) -> Self {
        BlockParams {
            domain: with_domain.then_some(rule.domain.as_str()),
            severity: rule.severity,
            reject_media: rule.reject_media,
            reject_reports: rule.reject_reports,
            private_comment: rule.private_comment.as_deref(),
            public_comment: rule.public_comment.as_deref(),
            obfuscate: rule.obfuscate,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    existing_domain_block: Option<RemoteBlock>,
}

impl AdminApi {
    /// `base` is the server's address (`https://social.example`).
    pub fn new(base: &str, token: &str) -> Result<Self> {
        let mut base = Url::parse(base).map_err(|err| {
            TuskError::usage(format!(
                "Mastodon URL {base:?} is not a URL ({err}); set mastodon.url or TUSK_MASTODON_URL \
                 to e.g. https://social.example"
            ))
        })?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = crate::http::client(REQUEST_TIMEOUT)?;
        Ok(AdminApi {
            http,
            base,
            token: token.trim().to_string(),
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str) -> Result<Url> {
        Ok(self.base.join(path)?)
    }

    /// Every block on the server, following the `Link: <...>; rel="next"`
    /// pages to the end.
    pub async fn list(&self) -> Result<Vec<RemoteBlock>> {
        let mut url = self.url(&format!("api/v1/admin/domain_blocks?limit={PAGE_LIMIT}"))?;
        let mut blocks = Vec::new();
        let mut seen_pages = std::collections::HashSet::new();
        loop {
            seen_pages.insert(url.clone());
            let response = self.send(READ_SCOPE, || self.http.get(url.clone())).await?;
            let next = next_link(response.headers(), &url);
            let page: Vec<RemoteBlock> = expect_success(response)
                .await?
                .json()
                .await
                .context("the server's list of domain blocks is not what the API documents")?;
            let empty = page.is_empty();
            blocks.extend(page);
            match next {
                Some(next) if !empty && !seen_pages.contains(&next) => url = next,
                _ => break,
            }
        }
        Ok(blocks)
    }

    /// Creates a block; 422 (already blocked) is an answer, not an error.
    pub async fn create(&self, rule: &BlockRule) -> Result<Created> {
        let url = self.url("api/v1/admin/domain_blocks")?;
        let params = BlockParams::of(rule, true);
        let response = self
            .send(WRITE_SCOPE, || self.http.post(url.clone()).json(&params))
            .await?;
        if response.status() == StatusCode::UNPROCESSABLE_ENTITY {
            let body: ErrorBody = response.json().await.unwrap_or(ErrorBody {
                error: None,
                existing_domain_block: None,
            });
            let message = body.error.unwrap_or_else(|| "refused (422)".into());
            if body.existing_domain_block.is_none() {
                anyhow::bail!("the server refused to block {}: {message}", rule.domain);
            }
            return Ok(Created::Exists {
                message,
                existing: body.existing_domain_block,
            });
        }
        let block = expect_success(response)
            .await?
            .json()
            .await
            .context("the server's answer to a new block is not what the API documents")?;
        Ok(Created::New(block))
    }

    /// Changes an existing block's severity, flags and comments.
    pub async fn update(&self, id: &str, rule: &BlockRule) -> Result<RemoteBlock> {
        let url = self.url(&format!("api/v1/admin/domain_blocks/{id}"))?;
        let params = BlockParams::of(rule, false);
        let response = self
            .send(WRITE_SCOPE, || self.http.put(url.clone()).json(&params))
            .await?;
        expect_success(response)
            .await?
            .json()
            .await
            .context("the server's answer to a changed block is not what the API documents")
    }

    /// Lifts a block.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let url = self.url(&format!("api/v1/admin/domain_blocks/{id}"))?;
        let response = self
            .send(WRITE_SCOPE, || {
                self.http.request(Method::DELETE, url.clone())
            })
            .await?;
        expect_success(response).await?;
        Ok(())
    }

    /// Sends a request with the token, waiting out rate limits: after a 429
    /// until `X-RateLimit-Reset` and trying again, and after a response that
    /// spent the last request of the window until it resets. 401 and 403
    /// are the token's fault: usage errors naming the scope.
    async fn send(&self, scope: &str, build: impl Fn() -> RequestBuilder) -> Result<Response> {
        for attempt in 1..=RATE_LIMIT_TRIES {
            let request = build().bearer_auth(&self.token);
            let response = request.send().await.map_err(|err| {
                anyhow!(
                    "could not reach {}: {}",
                    self.base,
                    crate::http::error_chain(&err)
                )
            })?;
            let status = response.status();
            let wait = rate_limit_wait(response.headers());
            if status == StatusCode::TOO_MANY_REQUESTS {
                let wait = wait.unwrap_or(Duration::from_secs(60));
                if attempt == RATE_LIMIT_TRIES {
                    break;
                }
                tracing::info!(
                    "rate limited by {}; waiting {:.0?} for the limit to reset",
                    self.base,
                    wait
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED {
                return Err(TuskError::usage(format!(
                    "{} refused the token (401: {}); create an application with the {READ_SCOPE} \
                     and {WRITE_SCOPE} scopes and put its access token in blocks.token_file or \
                     TUSK_MASTODON_TOKEN",
                    self.base,
                    error_message(response).await
                )));
            }
            if status == StatusCode::FORBIDDEN {
                return Err(TuskError::usage(format!(
                    "{} refused the request (403: {}); the token needs the {scope} scope (and \
                     its account a role allowed to manage federation)",
                    self.base,
                    error_message(response).await
                )));
            }
            if remaining_is_zero(response.headers())
                && let Some(wait) = wait
            {
                tracing::info!("rate limit spent; waiting {wait:.0?} for it to reset");
                tokio::time::sleep(wait).await;
            }
            return Ok(response);
        }
        anyhow::bail!(
            "{} kept answering 429 Too Many Requests after {RATE_LIMIT_TRIES} waits; try again later",
            self.base
        )
    }
}

/// The text at `url` (a shared blocklist, a hashtag's feed), without the
/// token: it goes to the admin's own server only.
pub async fn fetch_text(url: &str) -> Result<String> {
    let http = crate::http::client(REQUEST_TIMEOUT)?;
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|err| anyhow!("could not fetch {url}: {}", crate::http::error_chain(&err)))?;
    expect_success(response)
        .await?
        .text()
        .await
        .with_context(|| format!("could not read {url}"))
}

async fn expect_success(response: Response) -> Result<Response> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let url = response.url().clone();
    let message = error_message(response).await;
    anyhow::bail!("{url} answered {status}: {message}")
}

async fn error_message(response: Response) -> String {
    let text = response.text().await.unwrap_or_default();
    serde_json::from_str::<ErrorBody>(&text)
        .ok()
        .and_then(|body| body.error)
        .unwrap_or_else(|| text.chars().take(200).collect())
}

/// The `rel="next"` target of a `Link` header, resolved against `current`.
fn next_link(headers: &HeaderMap, current: &Url) -> Option<Url> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|link| {
            let (target, params) = link.split_once(';')?;
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            let is_next = params.split(';').any(|param| {
                let param = param.trim().replace(' ', "");
                param == "rel=\"next\"" || param == "rel=next"
            });
            is_next.then(|| current.join(target).ok()).flatten()
        })
}

/// How long until `X-RateLimit-Reset` (an ISO 8601 time), within limits.
fn rate_limit_wait(headers: &HeaderMap) -> Option<Duration> {
    let reset = headers.get("x-ratelimit-reset")?.to_str().ok()?;
    let reset = chrono::DateTime::parse_from_rfc3339(reset.trim()).ok()?;
    let wait = reset.with_timezone(&chrono::Utc) - chrono::Utc::now();
    let wait = wait.to_std().unwrap_or(Duration::ZERO);
    // A little past the reset, so the next request lands in the new window.
    Some((wait + Duration::from_millis(100)).min(MAX_RATE_LIMIT_WAIT))
}

fn remaining_is_zero(headers: &HeaderMap) -> bool {
    headers
        .get("x-ratelimit-remaining")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim() == "0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn finds_the_next_page_among_links() {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::LINK,
            HeaderValue::from_static(
                "<https://s.example/api/v1/admin/domain_blocks?limit=200&max_id=7>; rel=\"next\", \
                 <https://s.example/api/v1/admin/domain_blocks?limit=200&min_id=9>; rel=\"prev\"",
            ),
        );
        let current = Url::parse("https://s.example/api/v1/admin/domain_blocks").unwrap();
        let next = next_link(&headers, &current).unwrap();
        assert_eq!(next.query(), Some("limit=200&max_id=7"));
        headers.insert(
            reqwest::header::LINK,
            HeaderValue::from_static("<https://s.example/x?min_id=9>; rel=\"prev\""),
        );
        assert_eq!(next_link(&headers, &current), None);
    }

    #[test]
    fn waits_until_the_reset_time() {
        let mut headers = HeaderMap::new();
        let reset = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
        headers.insert("x-ratelimit-reset", HeaderValue::from_str(&reset).unwrap());
        let wait = rate_limit_wait(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(1) && wait <= Duration::from_millis(2200),
            "{wait:?}"
        );
        let past = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
        headers.insert("x-ratelimit-reset", HeaderValue::from_str(&past).unwrap());
        assert!(rate_limit_wait(&headers).unwrap() <= Duration::from_millis(100));
    }

    #[test]
    fn reads_blocks_as_the_api_serialises_them() {
        let json = r#"{"id":"12","domain":"bad.example","digest":"ab","created_at":"2024-01-01T00:00:00.000Z",
            "severity":"silence","reject_media":true,"reject_reports":false,
            "private_comment":null,"public_comment":"spam","obfuscate":false}"#;
        let block: RemoteBlock = serde_json::from_str(json).unwrap();
        assert_eq!(block.id, "12");
        assert_eq!(block.rule.severity, Severity::Silence);
        assert_eq!(block.rule.public_comment.as_deref(), Some("spam"));
    }
}
