//! Where Mastodon's Paperclip attachments keep their files: the classes it
//! stores, their styles, and the key of every style of a row (Mastodon 4.3,
//! kt-paperclip 7.2). Prune derives keys from rows with this and reads keys
//! back into rows for orphan checks, so both directions live here.

/// One attachment of one model, as `has_attached_file` declares it.
#[derive(Debug, PartialEq, Eq)]
pub struct Attachment {
    /// Table of the model (`media_attachments`), also its key's class segment.
    pub table: &'static str,
    /// Column prefix (`file` for `file_file_name`).
    pub name: &'static str,
    /// Key segment: Paperclip's pluralized attachment name (`files`).
    pub segment: &'static str,
    /// SQL that is true for a remote record, whose files sit under `cache/`
    /// once `<name>_storage_schema_version >= 1`; `None` for models without
    /// `local?` (never under `cache/`).
    pub remote_sql: Option<&'static str>,
}

pub const MEDIA_FILE: Attachment = Attachment {
    table: "media_attachments",
    name: "file",
    segment: "files",
    remote_sql: Some("remote_url <> ''"),
};
pub const MEDIA_THUMBNAIL: Attachment = Attachment {
    table: "media_attachments",
    name: "thumbnail",
    segment: "thumbnails",
    remote_sql: Some("remote_url <> ''"),
};
pub const AVATAR: Attachment = Attachment {
    table: "accounts",
    name: "avatar",
    segment: "avatars",
    remote_sql: Some("domain IS NOT NULL"),
};
pub const HEADER: Attachment = Attachment {
    table: "accounts",
    name: "header",
    segment: "headers",
    remote_sql: Some("domain IS NOT NULL"),
};
pub const PREVIEW_CARD_IMAGE: Attachment = Attachment {
    table: "preview_cards",
    name: "image",
    segment: "images",
    // PreviewCard#local? is always false.
    remote_sql: Some("true"),
};

/// A user archive (`Backup#dump`): one `original`, never under `cache/`
/// (Backup has no `local?`), private on S3.
pub const BACKUP_DUMP: Attachment = Attachment {
    table: "backups",
    name: "dump",
    segment: "dumps",
    remote_sql: None,
};

/// Every class Mastodon 4.2–4.3 stores files for. Keys of any other class
/// are never treated as orphans: tootctl 4.2/4.3 deleted provider icons that
/// way (fixed upstream in mastodon#32720).
pub const KNOWN: &[Attachment] = &[
    MEDIA_FILE,
    MEDIA_THUMBNAIL,
    AVATAR,
    HEADER,
    PREVIEW_CARD_IMAGE,
    Attachment {
        table: "custom_emojis",
        name: "image",
        segment: "images",
        remote_sql: Some("domain IS NOT NULL"),
    },
    Attachment {
        table: "site_uploads",
        name: "file",
        segment: "files",
        remote_sql: None,
    },
    BACKUP_DUMP,
    Attachment {
        table: "imports",
        name: "data",
        segment: "data",
        remote_sql: None,
    },
    Attachment {
        table: "preview_card_providers",
        name: "icon",
        segment: "icons",
        remote_sql: None,
    },
];

impl Attachment {
    pub fn column(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.name)
    }

    /// `(style, file name)` of every file Paperclip keeps for one stored
    /// original. Deleting a style that was never made costs nothing, so
    /// where the content type leaves the `small` style's extension open,
    /// both candidates are listed.
    pub fn style_files(
        &self,
        file_name: &str,
        content_type: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        let mut files = vec![("original", file_name.to_string())];
        let png = || with_extension(file_name, "png");
        let content_type = content_type.unwrap_or("");
        match (self.table, self.name) {
            ("media_attachments", "file") => {
                // Animated GIFs become mp4 with a png preview; other images
                // keep their format for `small`; audio has no `small`.
                if content_type == "image/gif" || content_type.starts_with("video/") {
                    files.push(("small", png()));
                } else if content_type.starts_with("image/") {
                    files.push(("small", file_name.to_string()));
                } else if !content_type.starts_with("audio/") {
                    files.push(("small", file_name.to_string()));
                    files.push(("small", png()));
                }
            }
            ("accounts", _) if content_type == "image/gif" => files.push(("static", png())),
            ("custom_emojis", _) => files.push(("static", png())),
            _ => {}
        }
        files.dedup();
        files
    }

    /// The key of one style of the row `id` below the media root (without
    /// `S3_KEY_PREFIX`).
    pub fn key(&self, id: i64, cached: bool, style: &str, file_name: &str) -> String {
        format!(
            "{}{}/{}/{}/{style}/{file_name}",
            if cached { "cache/" } else { "" },
            self.table,
            self.segment,
            id_partition(id)
        )
    }
}

/// `name.jpg` -> `name.png`: Paperclip's name for a style with its own format.
fn with_extension(file_name: &str, extension: &str) -> String {
    let stem = file_name.rsplit_once('.').map_or(file_name, |(stem, _)| {
        if stem.is_empty() { file_name } else { stem }
    });
    format!("{stem}.{extension}")
}

/// The part of a file name before its extension.
pub fn stem(file_name: &str) -> &str {
    match file_name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => file_name,
    }
}

/// kt-paperclip's `:id_partition`: the id zero-padded to 9 digits (12 from
/// a billion up) in groups of three, so snowflake ids give six groups.
/// Like Ruby's `scan(/\d{3}/)`, trailing digits beyond a group are dropped.
pub fn id_partition(id: i64) -> String {
    let digits = if id < 1_000_000_000 {
        format!("{id:09}")
    } else {
        format!("{id:012}")
    };
    let groups: Vec<&str> = digits
        .as_bytes()
        .chunks_exact(3)
        .map(|group| std::str::from_utf8(group).expect("ascii digits"))
        .collect();
    groups.join("/")
}

/// What a key below the media root says about its record.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyShape<'k> {
    /// `class/attachment/<3 or 6 groups>/style/file` of a known class.
    Attachment {
        attachment: &'static Attachment,
        id: i64,
        style: &'k str,
        file_name: &'k str,
    },
    /// The right shape, but a class tusk does not know: never an orphan.
    UnknownClass,
    /// Anything else, including "directory" keys ending in `/`.
    Unrecognized,
}

/// Reads a key (relative to the media root; a leading `cache/` allowed).
pub fn parse_key(key: &str) -> KeyShape<'_> {
    if key.ends_with('/') {
        return KeyShape::Unrecognized;
    }
    let key = key.strip_prefix("cache/").unwrap_or(key);
    let segments: Vec<&str> = key.split('/').collect();
    let groups = segments.len().saturating_sub(4);
    if !(groups == 3 || groups == 6) {
        return KeyShape::Unrecognized;
    }
    let partition = &segments[2..2 + groups];
    if !partition
        .iter()
        .all(|g| g.len() == 3 && g.bytes().all(|b| b.is_ascii_digit()))
    {
        return KeyShape::Unrecognized;
    }
    let (style, file_name) = (segments[2 + groups], segments[3 + groups]);
    if style.is_empty() || file_name.is_empty() {
        return KeyShape::Unrecognized;
    }
    let Ok(id) = partition.concat().parse::<i64>() else {
        return KeyShape::Unrecognized;
    };
    match KNOWN
        .iter()
        .find(|a| a.table == segments[0] && a.segment == segments[1])
    {
        Some(attachment) => KeyShape::Attachment {
            attachment,
            id,
            style,
            file_name,
        },
        None => KeyShape::UnknownClass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_like_paperclip() {
        assert_eq!(id_partition(1234), "000/001/234");
        assert_eq!(id_partition(999_999_999), "999/999/999");
        assert_eq!(
            id_partition(109_876_543_210_987_654),
            "109/876/543/210/987/654"
        );
        // 10 digits: "%012d" keeps four groups, as Ruby would.
        assert_eq!(id_partition(1_234_567_890), "001/234/567/890");
    }

    #[test]
    fn keys_round_trip() {
        let key = MEDIA_FILE.key(
            109_876_543_210_987_654,
            true,
            "small",
            "0123456789abcdef.png",
        );
        assert_eq!(
            key,
            "cache/media_attachments/files/109/876/543/210/987/654/small/0123456789abcdef.png"
        );
        assert_eq!(
            parse_key(&key),
            KeyShape::Attachment {
                attachment: &KNOWN[0],
                id: 109_876_543_210_987_654,
                style: "small",
                file_name: "0123456789abcdef.png"
            }
        );
        match parse_key("accounts/avatars/000/000/042/original/a.png") {
            KeyShape::Attachment { attachment, id, .. } => {
                assert_eq!(attachment, &AVATAR);
                assert_eq!(id, 42);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn odd_keys_are_never_attachments() {
        assert_eq!(
            parse_key("site_uploads/files/000/000/003/@1x/"),
            KeyShape::Unrecognized
        );
        assert_eq!(
            parse_key("media_attachments/files/1/2/3/original/a.png"),
            KeyShape::Unrecognized
        );
        assert_eq!(
            parse_key("media_attachments/files/000/001/original/a.png"),
            KeyShape::Unrecognized
        );
        assert_eq!(parse_key("robots.txt"), KeyShape::Unrecognized);
        assert_eq!(
            parse_key("mystery/things/000/000/001/original/x.png"),
            KeyShape::UnknownClass
        );
    }

    #[test]
    fn styles_follow_content_types() {
        let styles = |a: &Attachment, name, ct| a.style_files(name, Some(ct));
        assert_eq!(
            styles(&MEDIA_FILE, "a.jpg", "image/jpeg"),
            vec![("original", "a.jpg".into()), ("small", "a.jpg".into())]
        );
        assert_eq!(
            styles(&MEDIA_FILE, "a.mp4", "video/mp4"),
            vec![("original", "a.mp4".into()), ("small", "a.png".into())]
        );
        assert_eq!(
            styles(&MEDIA_FILE, "a.mp3", "audio/mpeg"),
            vec![("original", "a.mp3".into())]
        );
        assert_eq!(
            styles(&AVATAR, "a.gif", "image/gif"),
            vec![("original", "a.gif".into()), ("static", "a.png".into())]
        );
        assert_eq!(
            styles(&AVATAR, "a.png", "image/png"),
            vec![("original", "a.png".into())]
        );
        assert_eq!(
            styles(&PREVIEW_CARD_IMAGE, "a.gif", "image/gif"),
            vec![("original", "a.gif".into())]
        );
    }
}
