#!/usr/bin/env python3
"""Write a Mastodon `public/system` media tree that matches the fixture database.

    scripts/media-fixture.py --database-url URL --root DIR [--size-min 20000] [--size-max 200000]
                             [--seed N] [--sizes-from-db] [--backups 3] [--no-orphans]
                             [--manifest FILE] [--clean]
    scripts/media-fixture.py --synthetic N --root DIR [--size-min ...] [--seed N] [--manifest FILE]

Database mode reads the rows with psql (`psql -X -A -t -F <TAB> -d URL -c ...`, from $PGBIN if set,
else PATH) and, for every attachment that has a stored file (`<att>_file_name` set), writes each
style at the path Paperclip uses in Mastodon 4.3 (shared/notes/mastodon.md §2):

    [cache/]<class>/<attachment>/<id_partition>/<style>/<filename>

  id_partition  ids < 1e9: "%09d" in 3-digit groups (000/001/234); else "%012d" in 3-digit groups,
                so an 18-digit snowflake gives 6 groups (Ruby's scan(/\\d{3}/): extra digits dropped)
  cache/        only for remote records (accounts.domain set, media_attachments.remote_url <> '',
                custom_emojis.domain set, every preview card) whose `<att>_storage_schema_version`
                column exists and is >= 1 (NULL = 0 = legacy path). media_attachments has no
                thumbnail_storage_schema_version in 4.3, so thumbnails never get cache/ there.
  styles        media_attachments.file: image/* -> original + small (small of image/gif is .png,
                other images keep their extension); video/* -> original + small (.png);
                anything else (audio) -> original only. thumbnails, preview_cards.image,
                backups.dump: original. accounts avatar/header: original (+ static .png for
                image/gif); custom_emojis.image: original + static (.png).
  filename      original: `<att>_file_name` as stored; other styles: its basename + the style's
                format extension (or the original extension).

Tables that the fixture lacks (custom_emojis) are used when they exist; the fixture's backups rows
(user archives) get their dumps. Files of media
attachments whose account is suspended (accounts.suspended_at set) get mode 0600, as
SuspendAccountService leaves them on disk (on S3 they become ACL private); all others 0644.
Each file's mtime is its `<att>_updated_at`.

Extras (not backed by rows of the fixture):
  * --backups N user archives backups/dumps/<id_partition>/original/archive-<YYYYmmddHHMMSS>-<32 hex>.zip
    (Mastodon's BackupService name; ids 1..N; mode 0644; S3 ACL private) only when there is no
    `backups` table (fixtures from before it had one);
  * orphans (unless --no-orphans): media files whose id has no row (6- and 3-group, local and
    cache/), an account avatar without a row, a stray variant name under an existing media row,
    and a file of a class Mastodon's remove-orphans does not know:
    preview_card_providers/icons/000/000/001/original/x.png.

File content: deterministic pseudo-random bytes (a magic number of the file type, then bytes from
a PRNG seeded by --seed and the path), size uniform in [--size-min, --size-max] (also seeded by
the path), or the row's `<att>_file_size` for originals with --sizes-from-db. Re-running gives
identical bytes, sizes, modes and mtimes. Existing files are overwritten; other files under --root
are left alone unless --clean.

--synthetic N writes N files media_attachments/files/<6-group snowflake partition>/original/<16 hex>.jpg
without a database (for benchmarks).

stdout: a JSON summary: root, files, bytes, classes ({prefix: {files, bytes}} where prefix is
"[cache/]<class>/<attachment>"), partitions ({"3": n, "6": n}), cache_files, orphans (paths),
private (0600 paths), backups (paths), and the manifest path.
--manifest FILE writes one TSV line per file (header first):
    path  size  mode  md5  content_type  acl  kind  table  id  style
  acl: the S3 ACL Mastodon would use (public-read, or private for 0600 files and backups/);
  kind: record | backup | orphan.
"""

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone

PARTITION_LIMIT = 1_000_000_000

MAGIC = {
    "jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "png": b"\x89PNG\r\n\x1a\n",
    "gif": b"GIF89a",
    "webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    "mp4": b"\x00\x00\x00\x20ftypisom",
    "mp3": b"ID3\x04\x00\x00",
    "zip": b"PK\x03\x04",
}

CONTENT_TYPES = {
    "jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif",
    "webp": "image/webp", "mp4": "video/mp4", "mp3": "audio/mpeg", "zip": "application/zip",
}

# Fixed mtime for files without a timestamp column (orphans, synthetic files): 2024-06-01 UTC.
FIXED_MTIME = 1717200000


def id_partition(i):
    """kt-paperclip's :id_partition, including Ruby's scan(/\\d{3}/) dropping leftover digits."""
    s = ("%09d" % i) if i < PARTITION_LIMIT else ("%012d" % i)
    return "/".join(re.findall(r"\d{3}", s))


def split_ext(name):
    base, dot, ext = name.rpartition(".")
    if not dot or not base:
        return name, ""
    return base, ext


def style_filename(original, fmt):
    """Mastodon's :filename interpolation for a non-original style."""
    base, ext = split_ext(original)
    ext = fmt or ext
    return base + "." + ext if ext else base


class Psql:
    def __init__(self, url):
        self.url = url
        pgbin = os.environ.get("PGBIN")
        self.exe = os.path.join(pgbin, "psql") if pgbin else "psql"

    def rows(self, sql):
        cmd = [self.exe, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-F", "\t", "-d", self.url, "-c", sql]
        try:
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        except FileNotFoundError:
            sys.exit(f"media-fixture: {self.exe} not found (set PGBIN to the PostgreSQL bin dir)")
        except subprocess.CalledProcessError as e:
            sys.exit(f"media-fixture: psql failed: {e.stderr.strip()}\n  query: {sql}")
        return [line.split("\t") for line in out.splitlines() if line != ""]


class Writer:
    def __init__(self, root, seed, size_min, size_max, manifest):
        self.root = root
        self.seed = seed
        self.size_min = size_min
        self.size_max = size_max
        self.entries = []  # dicts, in write order
        self.paths = set()
        self.manifest = manifest

    def size_for(self, path):
        h = hashlib.sha256(f"{self.seed}:size:{path}".encode()).digest()
        return self.size_min + int.from_bytes(h[:8], "big") % (self.size_max - self.size_min + 1)

    def content(self, path, size):
        ext = split_ext(path.rsplit("/", 1)[-1])[1].lower()
        head = MAGIC.get(ext, b"")[:size]
        body = random.Random(f"{self.seed}:data:{path}").randbytes(size - len(head))
        return head + body

    def write(self, path, *, content_type, mode=0o644, acl="public-read", kind="record",
              table="", rid="", style="original", mtime=None, size=None):
        if path in self.paths:
            return
        self.paths.add(path)
        if size is None or size <= 0:
            size = self.size_for(path)
        data = self.content(path, size)
        full = os.path.join(self.root, path)
        d = os.path.dirname(full)
        os.makedirs(d, mode=0o755, exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
        os.chmod(full, mode)
        t = FIXED_MTIME if mtime is None else mtime
        os.utime(full, (t, t))
        self.entries.append({
            "path": path, "size": size, "mode": mode,
            "md5": hashlib.md5(data).hexdigest() if self.manifest else "",
            "content_type": content_type, "acl": acl, "kind": kind,
            "table": table, "id": str(rid), "style": style,
        })

    def summary(self):
        classes = {}
        parts = {}
        for e in self.entries:
            segs = e["path"].split("/")
            cache = segs[0] == "cache"
            core = segs[1:] if cache else segs
            prefix = ("cache/" if cache else "") + "/".join(core[:2])
            c = classes.setdefault(prefix, {"files": 0, "bytes": 0})
            c["files"] += 1
            c["bytes"] += e["size"]
            groups = str(len(core) - 4)  # class/attachment/<groups>/style/file
            parts[groups] = parts.get(groups, 0) + 1
        return {
            "root": os.path.abspath(self.root),
            "files": len(self.entries),
            "bytes": sum(e["size"] for e in self.entries),
            "classes": dict(sorted(classes.items())),
            "partitions": dict(sorted(parts.items())),
            "cache_files": sum(1 for e in self.entries if e["path"].startswith("cache/")),
            "orphans": [e["path"] for e in self.entries if e["kind"] == "orphan"],
            "private": [e["path"] for e in self.entries if e["mode"] == 0o600],
            "backups": [e["path"] for e in self.entries if e["kind"] == "backup"],
            "manifest": os.path.abspath(self.manifest) if self.manifest else None,
        }

    def write_manifest(self):
        if not self.manifest:
            return
        cols = ["path", "size", "mode", "md5", "content_type", "acl", "kind", "table", "id", "style"]
        with open(self.manifest, "w") as f:
            f.write("\t".join(cols) + "\n")
            for e in sorted(self.entries, key=lambda e: e["path"]):
                row = dict(e, mode="%04o" % e["mode"])
                f.write("\t".join(str(row[c]) for c in cols) + "\n")


# --- database mode ---------------------------------------------------------------------------------

def media_file_styles(content_type, name):
    """[(style, format or None, content type)] of media_attachments.file (Mastodon 4.3)."""
    if content_type == "image/gif":
        return [("original", None, content_type), ("small", "png", "image/png")]
    if content_type.startswith("image/"):
        return [("original", None, content_type), ("small", None, content_type)]
    if content_type.startswith("video/"):
        return [("original", None, content_type), ("small", "png", "image/png")]
    return [("original", None, content_type)]


def static_styles(content_type, name):
    """accounts avatar/header: original, plus a static png of an animated gif."""
    styles = [("original", None, content_type)]
    if content_type == "image/gif":
        styles.append(("static", "png", "image/png"))
    return styles


def emoji_styles(content_type, name):
    return [("original", None, content_type), ("static", "png", "image/png")]


def original_only(content_type, name):
    return [("original", None, content_type)]


# (table, class path, attachment, plural attachment path, SQL "is local", styles function)
# local is None: the model has no local? (no cache/ prefix ever); "false": never local.
MODELS = [
    ("accounts", "accounts", "avatar", "avatars", "t.domain IS NULL", static_styles),
    ("accounts", "accounts", "header", "headers", "t.domain IS NULL", static_styles),
    ("media_attachments", "media_attachments", "file", "files", "t.remote_url = ''", media_file_styles),
    ("media_attachments", "media_attachments", "thumbnail", "thumbnails", "t.remote_url = ''", original_only),
    ("preview_cards", "preview_cards", "image", "images", "false", original_only),
    ("custom_emojis", "custom_emojis", "image", "images", "t.domain IS NULL", emoji_styles),
    ("backups", "backups", "dump", "dumps", None, original_only),
]


def columns(db):
    cols = {}
    for table, col in db.rows(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema()"):
        cols.setdefault(table, set()).add(col)
    return cols


def write_db_tree(db, w, args):
    cols = columns(db)
    if "media_attachments" not in cols or "accounts" not in cols:
        sys.exit("media-fixture: no media_attachments/accounts tables in that database (seed the fixture first)")
    for table, klass, att, att_path, local_sql, styles_fn in MODELS:
        if table not in cols:
            continue
        tc = cols[table]
        if f"{att}_file_name" not in tc:
            continue
        ver = f"COALESCE(t.{att}_storage_schema_version, 0)" if f"{att}_storage_schema_version" in tc else "0"
        is_local = "true" if local_sql is None else local_sql
        has_local = "false" if local_sql is None else "true"
        if table == "media_attachments" and "account_id" in tc:
            join = "LEFT JOIN accounts a ON a.id = t.account_id"
            private = "COALESCE(a.suspended_at IS NOT NULL, false)"
        else:
            join, private = "", "false"
        size = f"COALESCE(t.{att}_file_size, 0)" if f"{att}_file_size" in tc else "0"
        ctype = f"COALESCE(t.{att}_content_type, '')" if f"{att}_content_type" in tc else "''"
        upd = (f"COALESCE(extract(epoch FROM t.{att}_updated_at)::bigint, {FIXED_MTIME})"
               if f"{att}_updated_at" in tc else str(FIXED_MTIME))
        sql = (f"SELECT t.id, t.{att}_file_name, {ctype}, {size}, {ver}, ({is_local}), {has_local}, "
               f"({private}), {upd} FROM {table} t {join} "
               f"WHERE t.{att}_file_name IS NOT NULL AND t.{att}_file_name <> '' ORDER BY t.id")
        for rid, name, ct, fsize, version, local, has_local_q, priv, mtime in db.rows(sql):
            rid = int(rid)
            cache = has_local_q == "t" and local == "f" and int(version) >= 1
            ext = split_ext(name)[1].lower()
            ct = ct or CONTENT_TYPES.get(ext, "application/octet-stream")
            prefix = ("cache/" if cache else "") + f"{klass}/{att_path}/{id_partition(rid)}"
            mode = 0o600 if priv == "t" else 0o644
            acl = "private" if priv == "t" or table == "backups" else "public-read"
            for style, fmt, sct in styles_fn(ct, name):
                fname = name if style == "original" else style_filename(name, fmt)
                w.write(f"{prefix}/{style}/{fname}", content_type=sct, mode=mode, acl=acl,
                        kind="backup" if table == "backups" else "record", table=table, rid=rid,
                        style=style, mtime=int(mtime),
                        size=int(fsize) if (args.sizes_from_db and style == "original") else None)
    if "backups" not in cols:
        write_backups(w, args)
    if not args.no_orphans:
        write_orphans(db, w, args)


def hexname(seed, what, n=16):
    return hashlib.sha256(f"{seed}:{what}".encode()).hexdigest()[:n]


def write_backups(w, args):
    for i in range(1, args.backups + 1):
        ts = datetime.fromtimestamp(FIXED_MTIME + i * 86400, timezone.utc).strftime("%Y%m%d%H%M%S")
        name = f"archive-{ts}-{hexname(args.seed, f'backup{i}', 32)}.zip"
        w.write(f"backups/dumps/{id_partition(i)}/original/{name}", content_type="application/zip",
                acl="private", kind="backup", table="backups", rid=i, mtime=FIXED_MTIME + i * 86400)


def free_id(db, table, start, step):
    i = start
    while db.rows(f"SELECT 1 FROM {table} WHERE id = {i}"):
        i += step
    return i


def write_orphans(db, w, args):
    def orphan(path, table="", rid=""):
        ext = split_ext(path)[1].lower()
        w.write(path, content_type=CONTENT_TYPES.get(ext, "application/octet-stream"), kind="orphan",
                table=table, rid=rid)

    # A local media upload whose row is gone (6 groups), with its small style.
    mid = free_id(db, "media_attachments", 109_876_543_210_987_654, 1)
    h = hexname(args.seed, "orphan-media")
    orphan(f"media_attachments/files/{id_partition(mid)}/original/{h}.jpg", "media_attachments", mid)
    orphan(f"media_attachments/files/{id_partition(mid)}/small/{h}.jpg", "media_attachments", mid)
    # A cached remote media file whose row is gone (6 groups, cache/).
    rid = free_id(db, "media_attachments", mid + 1, 1)
    orphan(f"cache/media_attachments/files/{id_partition(rid)}/original/{hexname(args.seed, 'orphan-remote')}.png",
           "media_attachments", rid)
    # A pre-snowflake media id without a row (3 groups).
    sid = free_id(db, "media_attachments", 4242, 1)
    orphan(f"media_attachments/files/{id_partition(sid)}/original/{hexname(args.seed, 'orphan-legacy')}.gif",
           "media_attachments", sid)
    # An avatar of a deleted account (3 groups).
    aid = free_id(db, "accounts", 999_999, 1)
    orphan(f"accounts/avatars/{id_partition(aid)}/original/{hexname(args.seed, 'orphan-avatar')}.png", "accounts", aid)
    # A leftover variant: the row exists but its file name is another one (remove-orphans'
    # `variant?` check fails), e.g. after a re-upload.
    rows = db.rows("SELECT id FROM media_attachments WHERE remote_url = '' AND file_file_name IS NOT NULL "
                   "ORDER BY id LIMIT 1")
    if rows:
        lid = int(rows[0][0])
        orphan(f"media_attachments/files/{id_partition(lid)}/original/{hexname(args.seed, 'orphan-variant')}.jpg",
               "media_attachments", lid)
    # A class that Mastodon 4.2/4.3's remove-orphans does not whitelist (it deletes it on S3).
    orphan("preview_card_providers/icons/000/000/001/original/x.png", "preview_card_providers", 1)


# --- synthetic mode --------------------------------------------------------------------------------

def write_synthetic(w, args):
    # Snowflake ids from 2024-01-01 on, ~37 s apart: (ms << 16) | n.
    ms0 = 1704067200000
    for n in range(args.synthetic):
        ms = ms0 + n * 37_013 + int(hexname(args.seed, f"ms{n}", 4), 16) % 1000
        mid = (ms << 16) | (n & 0xFFFF)
        w.write(f"media_attachments/files/{id_partition(mid)}/original/{hexname(args.seed, f'syn{n}')}.jpg",
                content_type="image/jpeg", table="media_attachments", rid=mid, mtime=ms // 1000)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring (head -60 scripts/media-fixture.py) for the rules.")
    p.add_argument("--database-url", help="libpq URL or database name of a seeded fixture database")
    p.add_argument("--root", required=True, help="directory to write into (public/system)")
    p.add_argument("--size-min", type=int, default=20000)
    p.add_argument("--size-max", type=int, default=200000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes-from-db", action="store_true",
                   help="originals get the row's <att>_file_size bytes (when set)")
    p.add_argument("--backups", type=int, default=3, help="user archives to write when there is no backups table")
    p.add_argument("--no-orphans", action="store_true")
    p.add_argument("--synthetic", type=int, metavar="N", help="no database: N media files (6-group paths)")
    p.add_argument("--manifest", metavar="FILE", help="write a TSV line per file (outside --root!)")
    p.add_argument("--clean", action="store_true", help="delete --root first")
    args = p.parse_args()
    if args.size_min < 16 or args.size_max < args.size_min:
        p.error("need 16 <= --size-min <= --size-max")
    if (args.synthetic is None) == (args.database_url is None):
        p.error("give exactly one of --database-url and --synthetic")
    if args.manifest:
        man = os.path.abspath(args.manifest)
        if man.startswith(os.path.abspath(args.root) + os.sep):
            p.error("--manifest must not be inside --root (it would be taken for media)")
    if args.clean and os.path.isdir(args.root):
        shutil.rmtree(args.root)
    os.makedirs(args.root, exist_ok=True)

    w = Writer(args.root, args.seed, args.size_min, args.size_max, args.manifest)
    if args.synthetic is not None:
        write_synthetic(w, args)
    else:
        write_db_tree(Psql(args.database_url), w, args)
    w.write_manifest()
    json.dump(w.summary(), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
