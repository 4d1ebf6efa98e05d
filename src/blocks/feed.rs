//! A hashtag's RSS feed, as every Mastodon server publishes it at
//! `/tags/NAME.rss`: one `<item>` per post with its `<link>`, `<pubDate>`
//! and the post's HTML in `<description>`. The domains a post names are
//! read from the text of that HTML.

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use quick_xml::events::Event;

use crate::mastodon::blocklist::normalize_domain;

/// One post of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    pub link: String,
    pub published: Option<DateTime<Utc>>,
    /// The post's HTML.
    pub html: String,
}

/// The posts of an RSS 2.0 document, oldest first (Mastodon lists newest
/// first); posts without a date keep their place at the end.
pub fn parse_rss(xml: &str) -> Result<Vec<Post>> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut posts = Vec::new();
    let mut current: Option<Post> = None;
    let mut field: Option<&'static str> = None;
    loop {
        let event = reader.read_event().with_context(|| {
            format!(
                "the feed is not valid XML near byte {}",
                reader.buffer_position()
            )
        })?;
        match event {
            Event::Start(start) => match start.local_name().as_ref() {
                "item" | "entry" => {
                    current = Some(Post {
                        link: String::new(),
                        published: None,
                        html: String::new(),
                    })
                }
                "link" if current.is_some() => field = Some("link"),
                "pubDate" | "published" if current.is_some() => field = Some("date"),
                "description" | "content" if current.is_some() => field = Some("html"),
                _ => field = None,
            },
            Event::Text(text) => {
                if let (Some(post), Some(name)) = (current.as_mut(), field) {
                    append(post, name, &text.xml10_content());
                }
            }
            Event::GeneralRef(reference) => {
                if let (Some(post), Some(name)) = (current.as_mut(), field) {
                    let entity = reference.into_inner();
                    let text = match entity.as_ref() {
                        "lt" => "<".to_string(),
                        "gt" => ">".to_string(),
                        "amp" => "&".to_string(),
                        "quot" => "\"".to_string(),
                        "apos" => "'".to_string(),
                        other => numeric_entity(other).map(String::from).unwrap_or_default(),
                    };
                    append(post, name, &text);
                }
            }
            Event::CData(data) => {
                if let (Some(post), Some(name)) = (current.as_mut(), field) {
                    append(post, name, &data.into_inner());
                }
            }
            Event::End(end) => match end.local_name().as_ref() {
                "item" | "entry" => {
                    if let Some(mut post) = current.take() {
                        post.link = post.link.trim().to_string();
                        posts.push(post);
                    }
                    field = None;
                }
                _ => field = None,
            },
            Event::Eof => break,
            _ => {}
        }
    }
    posts.sort_by_key(|post| (post.published.is_none(), post.published));
    Ok(posts)
}

fn numeric_entity(entity: &str) -> Option<char> {
    let number = entity.strip_prefix('#')?;
    let code = match number.strip_prefix(['x', 'X']) {
        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
        None => number.parse().ok()?,
    };
    char::from_u32(code)
}

fn append(post: &mut Post, field: &str, text: &str) {
    match field {
        "link" => post.link.push_str(text),
        "html" => post.html.push_str(text),
        "date" => {
            let text = text.trim();
            post.published = DateTime::parse_from_rfc2822(text)
                .or_else(|_| DateTime::parse_from_rfc3339(text))
                .ok()
                .map(|date| date.with_timezone(&Utc));
        }
        _ => {}
    }
}

/// File extensions that look like top-level domains in a post's text.
const NOT_TLDS: [&str; 12] = [
    "png", "jpg", "jpeg", "gif", "webp", "mp4", "html", "htm", "php", "txt", "pdf", "json",
];

/// The domains a post's text names, in order, each once: written out
/// (`bad.example`), in links shown as text, or in `@user@bad.example`.
/// Markup and link targets are not text: a mention's or hashtag's link to
/// the poster's own server is not a named domain.
pub fn domains_named(html: &str) -> Vec<String> {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let mut found: Vec<String> = Vec::new();
    let words = text.split(|c: char| !(c.is_alphanumeric() || c == '.' || c == '-' || c == '_'));
    for word in words {
        let word = word.trim_matches(|c: char| c == '.' || c == '-' || c == '_');
        if !word.contains('.') {
            continue;
        }
        let Ok(domain) = normalize_domain(word) else {
            continue;
        };
        let tld = domain.rsplit('.').next().unwrap_or("");
        let tld_ok = (tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()))
            || tld.starts_with("xn--");
        if tld_ok && !NOT_TLDS.contains(&tld) && !found.contains(&domain) {
            found.push(domain);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEED: &str = r##"<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:webfeeds="http://webfeeds.org/rss/1.0" xmlns:media="http://search.yahoo.com/mrss/">
  <channel>
    <title>#fediblock</title>
    <item>
      <guid isPermaLink="true">https://big.example/@mod/2</guid>
      <link>https://big.example/@mod/2</link>
      <pubDate>Tue, 02 Jan 2024 10:00:00 +0000</pubDate>
      <description>&lt;p&gt;Spam from &lt;a href="https://spam.example/x"&gt;&lt;span class="invisible"&gt;https://&lt;/span&gt;&lt;span&gt;spam.example/x&lt;/span&gt;&lt;/a&gt; and picture.png &lt;a href="https://big.example/tags/fediblock" class="mention hashtag"&gt;#&lt;span&gt;fediblock&lt;/span&gt;&lt;/a&gt;&lt;/p&gt;</description>
      <category>fediblock</category>
    </item>
    <item>
      <link>https://big.example/@mod/1</link>
      <pubDate>Mon, 01 Jan 2024 10:00:00 +0000</pubDate>
      <description><![CDATA[<p>Harassment from @troll@Troll.Example, e.g. threats.</p>]]></description>
    </item>
  </channel>
</rss>"##;

    #[test]
    fn reads_posts_oldest_first() {
        let posts = parse_rss(FEED).unwrap();
        assert_eq!(posts.len(), 2);
        assert_eq!(posts[0].link, "https://big.example/@mod/1");
        assert_eq!(posts[1].link, "https://big.example/@mod/2");
        assert!(
            posts[1].html.contains("<span>spam.example/x</span>"),
            "{}",
            posts[1].html
        );
    }

    #[test]
    fn finds_the_domains_a_post_names_in_its_text() {
        let posts = parse_rss(FEED).unwrap();
        assert_eq!(domains_named(&posts[0].html), ["troll.example"]);
        assert_eq!(domains_named(&posts[1].html), ["spam.example"]);
    }

    #[test]
    fn invalid_xml_is_an_error() {
        assert!(parse_rss("<rss><item><link>x</item></rss>").is_err());
    }
}
