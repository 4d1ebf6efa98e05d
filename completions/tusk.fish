# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_tusk_global_optspecs
    string join \n config= database-url= time-zone= backup-dir= instance= compression= compression-level= pg-bin-dir= pg-sslmode= pg-sslrootcert= temp-dir= postgres-mode= docker-host= docker-transport= container= compose-service= compose-project= services= media-root= media-store= s3-bucket= s3-endpoint= s3-region= s3-key-prefix= s3-permission= s3-path-style= s3-sdk-checksums= mastodon-env-file= mastodon-url= json y/yes v/verbose q/quiet h/help V/version
end

function __fish_tusk_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_tusk_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_tusk_using_subcommand
    set -l cmd (__fish_tusk_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c tusk -n "__fish_tusk_needs_command" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_needs_command" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_needs_command" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_needs_command" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_needs_command" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_needs_command" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_needs_command" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_needs_command" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_needs_command" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_needs_command" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_needs_command" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_needs_command" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_needs_command" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_needs_command" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_needs_command" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_needs_command" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_needs_command" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_needs_command" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_needs_command" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_needs_command" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_needs_command" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_needs_command" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_needs_command" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_needs_command" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_needs_command" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_needs_command" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_needs_command" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_needs_command" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_needs_command" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_needs_command" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_needs_command" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_needs_command" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_needs_command" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_needs_command" -s V -l version -d 'Print version'
complete -c tusk -n "__fish_tusk_needs_command" -f -a "init" -d 'Write a first tusk.yaml: find Mastodon, ask what is left, check the connections'
complete -c tusk -n "__fish_tusk_needs_command" -f -a "backup" -d 'Dump the roles and the database into a new backup set'
complete -c tusk -n "__fish_tusk_needs_command" -f -a "backups" -d 'Inspect backup sets'
complete -c tusk -n "__fish_tusk_needs_command" -f -a "restore" -d 'Restore a backup set onto a server'
complete -c tusk -n "__fish_tusk_needs_command" -f -a "verify" -d 'Prove a backup set: checksums, then a test restore compared with the manifest'
complete -c tusk -n "__fish_tusk_needs_command" -f -a "media" -d 'Move the local media folder to S3-compatible storage, and check it'
complete -c tusk -n "__fish_tusk_needs_command" -f -a "prune" -d 'Remove cached media, avatars, headers, preview card images, user archives and orphaned files on retention rules'
complete -c tusk -n "__fish_tusk_needs_command" -f -a "tune" -d 'Recommend PostgreSQL settings for the instance (as PgTune computes them) and apply them'
complete -c tusk -n "__fish_tusk_needs_command" -f -a "blocks" -d 'Export, import and watch the instance\'s domain blocks (admin API)'
complete -c tusk -n "__fish_tusk_needs_command" -f -a "completions" -d 'Print shell completions'
complete -c tusk -n "__fish_tusk_needs_command" -f -a "man" -d 'Write man pages into a directory'
complete -c tusk -n "__fish_tusk_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tusk -n "__fish_tusk_using_subcommand init" -s o -l output -d 'The file to write' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand init" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand init" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand init" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand init" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand init" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand init" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand init" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand init" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand init" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand init" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand init" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand init" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand init" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand init" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand init" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand init" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand init" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand init" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand init" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand init" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand init" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand init" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand init" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand init" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand init" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand init" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand init" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand init" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand init" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand init" -l non-interactive -d 'Ask nothing: take the flags, and what is found for the rest (for scripts)'
complete -c tusk -n "__fish_tusk_using_subcommand init" -l force -d 'Replace the file if it exists'
complete -c tusk -n "__fish_tusk_using_subcommand init" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand init" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand init" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand init" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand init" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l stop-services -d 'Stop Mastodon\'s app containers (never PostgreSQL) during the dump and start them again afterwards, also on failure or Ctrl-C (Docker mode)'
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l prune -d 'Once the new set is complete, remove the sets the backup directory\'s retention policy no longer keeps (as `tusk backups prune`, without asking)'
complete -c tusk -n "__fish_tusk_using_subcommand backup" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand backup" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand backup" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand backup" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand backup" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -f -a "list" -d 'List backup sets, oldest first'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -f -a "prune" -d 'Remove the sets each destination\'s retention policy no longer keeps (restic\'s `forget` rules); asks first on a terminal, `--yes` for cron'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and not __fish_seen_subcommand_from list prune help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l destination -d 'Prune only this destination [default: every destination]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l dry-run -d 'List every set with keep or remove and the rules that keep it; remove nothing'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from prune" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from help" -f -a "list" -d 'List backup sets, oldest first'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from help" -f -a "prune" -d 'Remove the sets each destination\'s retention policy no longer keeps (restic\'s `forget` rules); asks first on a terminal, `--yes` for cron'
complete -c tusk -n "__fish_tusk_using_subcommand backups; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l target-url -d 'Server and database to restore into, with local tools (the database name defaults to the source\'s)' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l target-container -d 'Restore into this PostgreSQL container, with its own tools [default in Docker mode: the configured container]' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l database -d 'Database name on the target [default: from --target-url, else the source\'s]' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -s j -l jobs -d 'Parallel pg_restore jobs' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l role -d 'Role that owns the restored objects (with --no-owner)' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l force -d 'Replace a target database that already holds tables'
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l no-owner -d 'Do not set object owners from the dump (Mastodon\'s cross-server form)'
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l no-acl -d 'Leave out the grants: the objects\' and the database\'s own'
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l no-globals -d 'Skip the roles (globals) and restore only the database'
complete -c tusk -n "__fish_tusk_using_subcommand restore" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand restore" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand restore" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand restore" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand restore" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l verify-url -d 'Server for the scratch restore [default: the source database\'s server]' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l verify-container -d 'Restore into a throwaway container from the source container\'s image (`auto`; Docker mode), removed afterwards' -r -f -a "auto\t''"
complete -c tusk -n "__fish_tusk_using_subcommand verify" -s j -l jobs -d 'Parallel pg_restore jobs for the scratch restore' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l checksums-only -d 'Only re-hash the artefacts; no test restore'
complete -c tusk -n "__fish_tusk_using_subcommand verify" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand verify" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand verify" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand verify" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand verify" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -f -a "push" -d 'Upload public/system to the bucket with Mastodon\'s keys, headers and ACLs'
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -f -a "verify" -d 'Compare the local media folder with the bucket (exit 3 on differences)'
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -f -a "usage" -d 'Media sizes as the database records them beside what storage holds'
complete -c tusk -n "__fish_tusk_using_subcommand media; and not __fish_seen_subcommand_from push verify usage help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -s c -l concurrency -d 'Uploads in flight' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l dry-run -d 'Show what would be uploaded; change nothing'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l delete-local -d 'After the upload, delete local files that a verification proves stored and identical'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from push" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -s c -l concurrency -d 'Checks in flight' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from verify" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l bucket -d 'Measure the bucket instead of the local folder'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from usage" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from help" -f -a "push" -d 'Upload public/system to the bucket with Mastodon\'s keys, headers and ACLs'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from help" -f -a "verify" -d 'Compare the local media folder with the bucket (exit 3 on differences)'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from help" -f -a "usage" -d 'Media sizes as the database records them beside what storage holds'
complete -c tusk -n "__fish_tusk_using_subcommand media; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l media-cache-days -d 'Clear cached remote media attachments created more than N days ago' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l profiles-days -d 'Remote avatars/headers of accounts neither webfingered nor updated for N days' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l preview-cards-days -d 'Preview card images not updated for N days (Mastodon refetches only after 14)' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l user-archives-days -d 'Delete user archives (rows and files) created more than N days ago, as Mastodon\'s vacuum' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l only -d 'Run only these of the configured rules' -r -f -a "media_cache\t''
profiles\t''
preview_cards\t''
unattached_media\t''
user_archives\t''
orphans\t''"
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l media-cache-semantics -d 'tootctl (created before the cutoff) or vacuum (created and updated before it)' -r -f -a "tootctl\t'`tootctl media remove`: created before the cutoff'
vacuum\t'Mastodon\'s daily vacuum: created and updated before the cutoff'"
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l orphans-min-age -d 'Keep orphan candidates written less than this many minutes ago [default: 60]' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l start-after -d 'Resume an orphan scan after this key (printed when a scan stops)' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -s c -l concurrency -d 'Batches in flight, each with its own database session [default: 4]' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l batch-size -d 'Rows per batch [default: 1000]' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l unattached-media -d 'Delete attachments never posted, older than a day (rows and files)'
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l orphans -d 'Delete stored files that no database row points at'
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l avatars -d 'With --profiles-days: prune avatars [default: avatars and headers]'
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l headers -d 'With --profiles-days: prune headers [default: avatars and headers]'
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l include-follows -d 'With --profiles-days: also accounts that follow or are followed'
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l dry-run -d 'Report what would be freed; change nothing (-v lists the keys)'
complete -c tusk -n "__fish_tusk_using_subcommand prune" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand prune" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand prune" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand prune" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand prune" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l memory -d 'Memory of the database server, e.g. 16GB or 512MB [default: detected]' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l cpus -d 'CPUs of the database server [default: detected]' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l storage -d 'What the data directory is on [default: ssd]' -r -f -a "ssd\t'Solid-state drive (tusk\'s default when it cannot tell)'
hdd\t'Spinning disk'
san\t'Network storage (SAN, cloud block volumes)'
nvme\t'NVMe drive'"
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l connections -d 'Connections the server must accept [default: derived from Mastodon\'s settings]' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l compose-file -d 'Mastodon\'s compose file, for the processes\' pools [default: from the database container\'s labels, else beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l apply -d 'Write the settings with ALTER SYSTEM and reload (asks first; --yes for scripts)'
complete -c tusk -n "__fish_tusk_using_subcommand tune" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand tune" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand tune" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand tune" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand tune" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -f -a "export" -d 'Print the domain blocks as Mastodon\'s CSV or one domain per line'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -f -a "import" -d 'Compare a blocklist with the blocks in place, show the impact of new blocks, and apply them (--yes or --review)'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -f -a "watch" -d 'List domains a hashtag\'s RSS feed names that are not blocked yet'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and not __fish_seen_subcommand_from export import watch help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l format -d 'List format' -r -f -a "mastodon-csv\t'Mastodon\'s CSV (#domain,#severity,...)'
plain\t'One domain per line'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -s o -l output -d 'Write to this file instead of stdout' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from export" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l severity -d 'Severity where the list gives none (plain lists; CSV without #severity)' -r -f -a "noop\t'No limit; only the reject flags apply'
silence\t'Limit: hidden from accounts not following them'
suspend\t'Suspend: nothing from the domain is accepted'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l dry-run -d 'Show the difference and the impact; change nothing'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l review -d 'Ask about each new block on the terminal: block, limit, skip or quit'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l allow-loosen -d 'Also apply listed blocks that are looser than the block in place'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from import" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l state-file -d 'Where the domains already shown are remembered [default: blocks-watch.json in blocks.state_dir]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from watch" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from help" -f -a "export" -d 'Print the domain blocks as Mastodon\'s CSV or one domain per line'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from help" -f -a "import" -d 'Compare a blocklist with the blocks in place, show the impact of new blocks, and apply them (--yes or --review)'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from help" -f -a "watch" -d 'List domains a hashtag\'s RSS feed names that are not blocked yet'
complete -c tusk -n "__fish_tusk_using_subcommand blocks; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand completions" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand completions" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand completions" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand completions" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand man" -l config -d 'YAML configuration file [default: ./tusk.yaml, else /etc/tusk/tusk.yaml]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand man" -l database-url -d 'The Mastodon database as a libpq URL (postgresql://user:pass@host:port/db) [default: from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand man" -l time-zone -d 'IANA time zone of retention\'s calendar days, weeks, months and years [default: UTC]' -r
complete -c tusk -n "__fish_tusk_using_subcommand man" -l backup-dir -d 'Directory holding backup sets [default: /var/backups/tusk]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand man" -l instance -d 'Instance name used in backup ids [default: LOCAL_DOMAIN, else the host name]' -r
complete -c tusk -n "__fish_tusk_using_subcommand man" -l compression -d 'Compression of backup artefacts [default: zstd]' -r -f -a "zstd\t''
gzip\t''
none\t''"
complete -c tusk -n "__fish_tusk_using_subcommand man" -l compression-level -d 'Compression level (zstd 1-19, default 1; gzip 1-9, default 6)' -r
complete -c tusk -n "__fish_tusk_using_subcommand man" -l pg-bin-dir -d 'Directory of pg_dump, pg_restore and psql [default: newest /usr/lib/postgresql/*/bin, else PATH]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand man" -l pg-sslmode -d 'TLS to the database, as libpq\'s sslmode; an sslmode in the URL wins [default: DB_SSLMODE from .env.production, else prefer]' -r -f -a "disable\t'never TLS'
allow\t'plain first; TLS only when the server refuses a plain connection'
prefer\t'TLS when the server offers it, else plain (the default)'
require\t'TLS or fail; the certificate is checked only when a root certificate is available'
verify-ca\t'TLS, the certificate must chain to a CA in sslrootcert'
verify-full\t'TLS, the certificate must chain to a CA in sslrootcert and name the host'"
complete -c tusk -n "__fish_tusk_using_subcommand man" -l pg-sslrootcert -d 'CA certificate(s) (PEM) the database\'s certificate must chain to, or `system`; an sslrootcert in the URL wins [default: ~/.postgresql/root.crt if it exists]' -r
complete -c tusk -n "__fish_tusk_using_subcommand man" -l temp-dir -d 'Directory for temporary files, such as a seekable copy for parallel restore' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand man" -l postgres-mode -d 'Where pg_dump and friends run: on this machine, or inside the database container' -r -f -a "direct\t'On this machine, against the server\'s network address'
docker\t'Inside the database\'s container, through the Docker Engine'"
complete -c tusk -n "__fish_tusk_using_subcommand man" -l docker-host -d 'Docker Engine address (unix:///var/run/docker.sock, tcp://host:2375) [default: DOCKER_HOST]' -r
complete -c tusk -n "__fish_tusk_using_subcommand man" -l docker-transport -d 'How pg_dump\'s output leaves the container (Docker mode) [default: auto]' -r -f -a "auto\t'`pipe` when the Engine runs on this machine, else `exec`; falls back to `exec` when the helper container cannot deliver'
pipe\t'pg_dump runs in a helper container from the same image and writes into a named pipe on this machine'
exec\t'pg_dump\'s output streams through the Engine\'s exec API'"
complete -c tusk -n "__fish_tusk_using_subcommand man" -l container -d 'PostgreSQL container by name (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand man" -l compose-service -d 'PostgreSQL container by compose service label (Docker mode) [default: db]' -r
complete -c tusk -n "__fish_tusk_using_subcommand man" -l compose-project -d 'Compose project of the containers (Docker mode)' -r
complete -c tusk -n "__fish_tusk_using_subcommand man" -l services -d 'Mastodon\'s app services, stopped by --stop-services [default: web,streaming,sidekiq]' -r
complete -c tusk -n "__fish_tusk_using_subcommand man" -l media-root -d 'Mastodon\'s local media folder [default: public/system beside .env.production]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand man" -l media-store -d 'Where Mastodon keeps its media now, for prune [default: s3 if S3_ENABLED=true, else local]' -r -f -a "local\t'The media folder (`mastodon.media_root`)'
s3\t'The bucket (`s3:`)'"
complete -c tusk -n "__fish_tusk_using_subcommand man" -l s3-bucket -d 'Media bucket [default: S3_BUCKET from .env.production]' -r
complete -c tusk -n "__fish_tusk_using_subcommand man" -l s3-endpoint -d 'S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com [default: S3_ENDPOINT, else AWS]' -r
complete -c tusk -n "__fish_tusk_using_subcommand man" -l s3-region -d 'S3 region [default: S3_REGION, else us-east-1]' -r
complete -c tusk -n "__fish_tusk_using_subcommand man" -l s3-key-prefix -d 'Prefix of every media key [default: S3_KEY_PREFIX]' -r
complete -c tusk -n "__fish_tusk_using_subcommand man" -l s3-permission -d 'Canned ACL for public media; empty for stores without ACLs (B2, R2) [default: S3_PERMISSION, else public-read]' -r
complete -c tusk -n "__fish_tusk_using_subcommand man" -l s3-path-style -d 'Path-style URLs (endpoint/bucket/key) [default: true with an endpoint, as Mastodon]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand man" -l s3-sdk-checksums -d 'Also send the SDK\'s CRC32 checksum headers (some stores such as B2 reject them) [default: only for AWS itself]' -r -f -a "true\t''
false\t''"
complete -c tusk -n "__fish_tusk_using_subcommand man" -l mastodon-env-file -l env-file -d 'Mastodon\'s .env.production [default: ./.env.production if present]' -r -F
complete -c tusk -n "__fish_tusk_using_subcommand man" -l mastodon-url -d 'Mastodon\'s address for its API [default: https:// + WEB_DOMAIN or LOCAL_DOMAIN]' -r
complete -c tusk -n "__fish_tusk_using_subcommand man" -l json -d 'Print one JSON document on stdout instead of text'
complete -c tusk -n "__fish_tusk_using_subcommand man" -s y -l yes -d 'Answer yes to confirmations (does not imply --force)'
complete -c tusk -n "__fish_tusk_using_subcommand man" -s v -l verbose -d 'More detail in logs (-v debug, -vv trace)'
complete -c tusk -n "__fish_tusk_using_subcommand man" -s q -l quiet -d 'Only warnings and errors'
complete -c tusk -n "__fish_tusk_using_subcommand man" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tusk -n "__fish_tusk_using_subcommand help; and not __fish_seen_subcommand_from init backup backups restore verify media prune tune blocks completions man help" -f -a "init" -d 'Write a first tusk.yaml: find Mastodon, ask what is left, check the connections'
complete -c tusk -n "__fish_tusk_using_subcommand help; and not __fish_seen_subcommand_from init backup backups restore verify media prune tune blocks completions man help" -f -a "backup" -d 'Dump the roles and the database into a new backup set'
complete -c tusk -n "__fish_tusk_using_subcommand help; and not __fish_seen_subcommand_from init backup backups restore verify media prune tune blocks completions man help" -f -a "backups" -d 'Inspect backup sets'
complete -c tusk -n "__fish_tusk_using_subcommand help; and not __fish_seen_subcommand_from init backup backups restore verify media prune tune blocks completions man help" -f -a "restore" -d 'Restore a backup set onto a server'
complete -c tusk -n "__fish_tusk_using_subcommand help; and not __fish_seen_subcommand_from init backup backups restore verify media prune tune blocks completions man help" -f -a "verify" -d 'Prove a backup set: checksums, then a test restore compared with the manifest'
complete -c tusk -n "__fish_tusk_using_subcommand help; and not __fish_seen_subcommand_from init backup backups restore verify media prune tune blocks completions man help" -f -a "media" -d 'Move the local media folder to S3-compatible storage, and check it'
complete -c tusk -n "__fish_tusk_using_subcommand help; and not __fish_seen_subcommand_from init backup backups restore verify media prune tune blocks completions man help" -f -a "prune" -d 'Remove cached media, avatars, headers, preview card images, user archives and orphaned files on retention rules'
complete -c tusk -n "__fish_tusk_using_subcommand help; and not __fish_seen_subcommand_from init backup backups restore verify media prune tune blocks completions man help" -f -a "tune" -d 'Recommend PostgreSQL settings for the instance (as PgTune computes them) and apply them'
complete -c tusk -n "__fish_tusk_using_subcommand help; and not __fish_seen_subcommand_from init backup backups restore verify media prune tune blocks completions man help" -f -a "blocks" -d 'Export, import and watch the instance\'s domain blocks (admin API)'
complete -c tusk -n "__fish_tusk_using_subcommand help; and not __fish_seen_subcommand_from init backup backups restore verify media prune tune blocks completions man help" -f -a "completions" -d 'Print shell completions'
complete -c tusk -n "__fish_tusk_using_subcommand help; and not __fish_seen_subcommand_from init backup backups restore verify media prune tune blocks completions man help" -f -a "man" -d 'Write man pages into a directory'
complete -c tusk -n "__fish_tusk_using_subcommand help; and not __fish_seen_subcommand_from init backup backups restore verify media prune tune blocks completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tusk -n "__fish_tusk_using_subcommand help; and __fish_seen_subcommand_from backups" -f -a "list" -d 'List backup sets, oldest first'
complete -c tusk -n "__fish_tusk_using_subcommand help; and __fish_seen_subcommand_from backups" -f -a "prune" -d 'Remove the sets each destination\'s retention policy no longer keeps (restic\'s `forget` rules); asks first on a terminal, `--yes` for cron'
complete -c tusk -n "__fish_tusk_using_subcommand help; and __fish_seen_subcommand_from media" -f -a "push" -d 'Upload public/system to the bucket with Mastodon\'s keys, headers and ACLs'
complete -c tusk -n "__fish_tusk_using_subcommand help; and __fish_seen_subcommand_from media" -f -a "verify" -d 'Compare the local media folder with the bucket (exit 3 on differences)'
complete -c tusk -n "__fish_tusk_using_subcommand help; and __fish_seen_subcommand_from media" -f -a "usage" -d 'Media sizes as the database records them beside what storage holds'
complete -c tusk -n "__fish_tusk_using_subcommand help; and __fish_seen_subcommand_from blocks" -f -a "export" -d 'Print the domain blocks as Mastodon\'s CSV or one domain per line'
complete -c tusk -n "__fish_tusk_using_subcommand help; and __fish_seen_subcommand_from blocks" -f -a "import" -d 'Compare a blocklist with the blocks in place, show the impact of new blocks, and apply them (--yes or --review)'
complete -c tusk -n "__fish_tusk_using_subcommand help; and __fish_seen_subcommand_from blocks" -f -a "watch" -d 'List domains a hashtag\'s RSS feed names that are not blocked yet'
