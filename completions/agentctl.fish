# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_agentctl_global_optspecs
    string join \n log.level= log.format= h/help V/version
end

function __fish_agentctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_agentctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_agentctl_using_subcommand
    set -l cmd (__fish_agentctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c agentctl -n "__fish_agentctl_needs_command" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_needs_command" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_needs_command" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "agent" -d 'Run the agent daemon'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "config" -d 'Validate and inspect configuration files'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "config-sync" -d 'Make the API\'s configs equal a directory of YAML files (plan, then apply)'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "ring" -d 'Inspect the hash ring of a cluster'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "wal" -d 'Inspect write-ahead logs'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "completions" -d 'Print a shell completion script to standard output'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "man" -d 'Print the man page (roff) to standard output'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "config-check" -d 'Old name of `config check` (prints `config valid` on success)'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "wal-stats" -d 'Old name of `wal inspect`'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "target-stats" -d 'Old name of `wal inspect --job J --instance I --by-metric`'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "sample-stats" -d 'Old name of `wal inspect --selector S --per-series`'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and not __fish_seen_subcommand_from run help" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and not __fish_seen_subcommand_from run help" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and not __fish_seen_subcommand_from run help" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and not __fish_seen_subcommand_from run help" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and not __fish_seen_subcommand_from run help" -f -a "run" -d 'Run the clustered scraping daemon'
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and not __fish_seen_subcommand_from run help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from run" -l config.file -d 'Agent configuration file (agent.yaml). Without it the embedded default is used' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from run" -l server.http.address -d 'Address the HTTP server listens on [default: 127.0.0.1:12345]. Port 0 takes a free port; the address bound is logged (`msg="agent listening" addr=...`) and written to --server.http.address-file' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from run" -l server.http.address-file -d 'Write the address the HTTP server bound (`127.0.0.1:41234`) to this file once it listens, replacing the file atomically (for port 0, and for scripts and tests)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from run" -l api.token-file -d 'File holding a bearer token that config writes (PUT, POST, DELETE) must present' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from run" -l api.max-body-bytes -d 'Largest accepted config body, in bytes (larger: 413)' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from run" -l metrics.wal-directory -d 'Directory of the WAL (and of the embedded KV store) when the config file sets no metrics.wal_directory (the file wins, as in the old agent; also on a reload)' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from run" -l server.grpc.address -d 'The old agent\'s gRPC listen address, accepted so that its command lines (and the packaged CUSTOM_ARGS) still start: agentctl serves no gRPC (agents reshard through the KV store), so it has no effect, and a warning says so' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from run" -l disable-reporting -d 'The old agent\'s opt-out of usage reporting, accepted: agentctl sends no usage reports' -r -f -a "true\t''
false\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from run" -l enable-features -d 'The old agent\'s experimental features (comma-separated), accepted so that its command lines still start: none of them exists in agentctl, and a warning names each one given' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from run" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from run" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from run" -l server.http.enable-tls -d 'Serve HTTPS with server.http_tls_config (the old agent\'s flag; its spelling in the old docs, --server.http.tls-enabled, works too). agentctl serves HTTPS whenever server.http_tls_config names cert_file and key_file; with this flag, a config without them is refused instead of serving plain HTTP'
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from run" -l config.expand-env -d 'Expand ${VAR} and ${VAR:-default} in the config file; all-digit names such as ${1} (relabel capture references) are left as written'
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from run" -l config.enable-read-api -d 'Serve GET /-/config (the loaded config file, secrets redacted)'
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from run" -l api.disable-get-config -d 'Do not serve GET /agent/api/v1/configs/{name} (on by default: secrets are redacted)'
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from run" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from help" -f -a "run" -d 'Run the clustered scraping daemon'
complete -c agentctl -n "__fish_agentctl_using_subcommand agent; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and not __fish_seen_subcommand_from check diff list get put delete help" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and not __fish_seen_subcommand_from check diff list get put delete help" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and not __fish_seen_subcommand_from check diff list get put delete help" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and not __fish_seen_subcommand_from check diff list get put delete help" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and not __fish_seen_subcommand_from check diff list get put delete help" -f -a "check" -d 'Validate agent or instance config files; print every error'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and not __fish_seen_subcommand_from check diff list get put delete help" -f -a "diff" -d 'Show what `config-sync DIR` would change, with a unified diff per changed config'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and not __fish_seen_subcommand_from check diff list get put delete help" -f -a "list" -d 'List the stored configs (names; with --output json also their content hashes)'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and not __fish_seen_subcommand_from check diff list get put delete help" -f -a "get" -d 'Print a stored config as YAML, secrets shown as <secret>'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and not __fish_seen_subcommand_from check diff list get put delete help" -f -a "put" -d 'Validate FILE locally, then store it as config NAME (created or updated)'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and not __fish_seen_subcommand_from check diff list get put delete help" -f -a "delete" -d 'Delete a stored config'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and not __fish_seen_subcommand_from check diff list get put delete help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from check" -l kind -d 'Treat every file as this kind instead of detecting it' -r -f -a "agent\t'An agent configuration (agent.yaml)'
instance\t'An instance configuration (scrape_configs + remote_write), as PUT to the API'"
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from check" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from check" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from check" -s e -l expand-env -d 'Expand ${VAR} and ${VAR:-default} before parsing; all-digit names such as ${1} (relabel capture references) are left as written'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from check" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from diff" -s a -l addr -d 'URL of an agent\'s API' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from diff" -l kv -d 'Talk to the KV store directly instead: etcd://host:port[,host:port] (etcds:// for TLS) or embedded:PATH' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from diff" -l token-file -d 'File holding a bearer token sent with every API request' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from diff" -l ca-file -d 'CA certificates (PEM) that sign the agent\'s or etcd\'s certificate, instead of the system\'s' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from diff" -l cert-file -d 'Client certificate (PEM) to present, with --key-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from diff" -l key-file -d 'Private key (PEM) of --cert-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from diff" -l server-name -d 'Verify the server\'s certificate against this name instead of the host' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from diff" -l kv-username -d 'etcd user' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from diff" -l kv-password-file -d 'File holding the etcd user\'s password (first line; a file, so it stays out of the process list and the shell history)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from diff" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from diff" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from diff" -l insecure-skip-verify -d 'Accept any server certificate (for tests; the connection is then not authenticated)'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from diff" -l recursive -d 'Descend into subdirectories (names become relative paths: team/a.yml is team/a)'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from diff" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from diff" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from list" -s a -l addr -d 'URL of an agent\'s API' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from list" -l kv -d 'Talk to the KV store directly instead: etcd://host:port[,host:port] (etcds:// for TLS) or embedded:PATH' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from list" -l token-file -d 'File holding a bearer token sent with every API request' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from list" -l ca-file -d 'CA certificates (PEM) that sign the agent\'s or etcd\'s certificate, instead of the system\'s' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from list" -l cert-file -d 'Client certificate (PEM) to present, with --key-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from list" -l key-file -d 'Private key (PEM) of --cert-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from list" -l server-name -d 'Verify the server\'s certificate against this name instead of the host' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from list" -l kv-username -d 'etcd user' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from list" -l kv-password-file -d 'File holding the etcd user\'s password (first line; a file, so it stays out of the process list and the shell history)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from list" -l output -d 'Output format' -r -f -a "table\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from list" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from list" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from list" -l insecure-skip-verify -d 'Accept any server certificate (for tests; the connection is then not authenticated)'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from get" -s a -l addr -d 'URL of an agent\'s API' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from get" -l kv -d 'Talk to the KV store directly instead: etcd://host:port[,host:port] (etcds:// for TLS) or embedded:PATH' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from get" -l token-file -d 'File holding a bearer token sent with every API request' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from get" -l ca-file -d 'CA certificates (PEM) that sign the agent\'s or etcd\'s certificate, instead of the system\'s' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from get" -l cert-file -d 'Client certificate (PEM) to present, with --key-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from get" -l key-file -d 'Private key (PEM) of --cert-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from get" -l server-name -d 'Verify the server\'s certificate against this name instead of the host' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from get" -l kv-username -d 'etcd user' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from get" -l kv-password-file -d 'File holding the etcd user\'s password (first line; a file, so it stays out of the process list and the shell history)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from get" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from get" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from get" -l insecure-skip-verify -d 'Accept any server certificate (for tests; the connection is then not authenticated)'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from get" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from get" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from put" -s a -l addr -d 'URL of an agent\'s API' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from put" -l kv -d 'Talk to the KV store directly instead: etcd://host:port[,host:port] (etcds:// for TLS) or embedded:PATH' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from put" -l token-file -d 'File holding a bearer token sent with every API request' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from put" -l ca-file -d 'CA certificates (PEM) that sign the agent\'s or etcd\'s certificate, instead of the system\'s' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from put" -l cert-file -d 'Client certificate (PEM) to present, with --key-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from put" -l key-file -d 'Private key (PEM) of --cert-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from put" -l server-name -d 'Verify the server\'s certificate against this name instead of the host' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from put" -l kv-username -d 'etcd user' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from put" -l kv-password-file -d 'File holding the etcd user\'s password (first line; a file, so it stays out of the process list and the shell history)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from put" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from put" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from put" -l insecure-skip-verify -d 'Accept any server certificate (for tests; the connection is then not authenticated)'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from put" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from put" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from delete" -s a -l addr -d 'URL of an agent\'s API' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from delete" -l kv -d 'Talk to the KV store directly instead: etcd://host:port[,host:port] (etcds:// for TLS) or embedded:PATH' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from delete" -l token-file -d 'File holding a bearer token sent with every API request' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from delete" -l ca-file -d 'CA certificates (PEM) that sign the agent\'s or etcd\'s certificate, instead of the system\'s' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from delete" -l cert-file -d 'Client certificate (PEM) to present, with --key-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from delete" -l key-file -d 'Private key (PEM) of --cert-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from delete" -l server-name -d 'Verify the server\'s certificate against this name instead of the host' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from delete" -l kv-username -d 'etcd user' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from delete" -l kv-password-file -d 'File holding the etcd user\'s password (first line; a file, so it stays out of the process list and the shell history)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from delete" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from delete" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from delete" -l insecure-skip-verify -d 'Accept any server certificate (for tests; the connection is then not authenticated)'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from delete" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "check" -d 'Validate agent or instance config files; print every error'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "diff" -d 'Show what `config-sync DIR` would change, with a unified diff per changed config'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "list" -d 'List the stored configs (names; with --output json also their content hashes)'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "get" -d 'Print a stored config as YAML, secrets shown as <secret>'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "put" -d 'Validate FILE locally, then store it as config NAME (created or updated)'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "delete" -d 'Delete a stored config'
complete -c agentctl -n "__fish_agentctl_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -s a -l addr -d 'URL of an agent\'s API' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -l kv -d 'Talk to the KV store directly instead: etcd://host:port[,host:port] (etcds:// for TLS) or embedded:PATH' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -l token-file -d 'File holding a bearer token sent with every API request' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -l ca-file -d 'CA certificates (PEM) that sign the agent\'s or etcd\'s certificate, instead of the system\'s' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -l cert-file -d 'Client certificate (PEM) to present, with --key-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -l key-file -d 'Private key (PEM) of --cert-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -l server-name -d 'Verify the server\'s certificate against this name instead of the host' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -l kv-username -d 'etcd user' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -l kv-password-file -d 'File holding the etcd user\'s password (first line; a file, so it stays out of the process list and the shell history)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -l max-delete -d 'Refuse to delete more than this many configs (N) or this share of the store (N%)' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -l output -d 'Output format of the plan and results' -r -f -a "table\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -l insecure-skip-verify -d 'Accept any server certificate (for tests; the connection is then not authenticated)'
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -s d -l dry-run -d 'Plan only: validate every file and print what would change; write nothing'
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -l recursive -d 'Descend into subdirectories (the old tool read the top level only); names become relative paths without the extension (team/a.yml is team/a)'
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -l no-prune -d 'Keep configs that are in the store but not in the directory'
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -l allow-delete-all -d 'Skip the delete guard: allow an empty directory, a plan that deletes every config in the store, and any number of deletes'
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_using_subcommand config-sync" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and not __fish_seen_subcommand_from status forget owner help" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and not __fish_seen_subcommand_from status forget owner help" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and not __fish_seen_subcommand_from status forget owner help" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and not __fish_seen_subcommand_from status forget owner help" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and not __fish_seen_subcommand_from status forget owner help" -f -a "status" -d 'Show the ring\'s members, states, heartbeats and token ownership'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and not __fish_seen_subcommand_from status forget owner help" -f -a "forget" -d 'Remove a member from the ring (what the Forget button of /debug/ring does)'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and not __fish_seen_subcommand_from status forget owner help" -f -a "owner" -d 'Which agent scrapes a target, and why (scraping_service.sharding: targets)'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and not __fish_seen_subcommand_from status forget owner help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -s a -l addr -d 'URL of an agent to ask (its /debug/ring; `ring owner`: its /agent/api/v1/ring/owner) [default: http://localhost:12345]' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -l kv -d 'Read the ring from the KV store: etcd://host:port[,host:port] (etcds:// for TLS) or embedded:PATH' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -l ring.prefix -d 'Key prefix of the ring in the KV store' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -l ca-file -d 'CA certificates (PEM) that sign the agent\'s or etcd\'s certificate, instead of the system\'s' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -l cert-file -d 'Client certificate (PEM) to present, with --key-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -l key-file -d 'Private key (PEM) of --cert-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -l server-name -d 'Verify the server\'s certificate against this name instead of the host' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -l kv-username -d 'etcd user' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -l kv-password-file -d 'File holding the etcd user\'s password (first line; a file, so it stays out of the process list and the shell history)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -l kvstore.prefix -d 'Key prefix of the configs in the KV store (agent.yaml\'s `scraping_service.kvstore.prefix`); target sharding\'s keys are next to it' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -l sharding.prefix -d 'Key prefix of target sharding\'s keys in the KV store [default: next to --kvstore.prefix, its last segment replaced by sharding/: configurations/ -> sharding/, prod/configurations/ -> prod/sharding/, as the agents write them]' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -l output -d 'Output format' -r -f -a "table\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -l ring.heartbeat-timeout -d 'Heartbeats older than this make a member unhealthy (the agents\' heartbeat_timeout)' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -l insecure-skip-verify -d 'Accept any server certificate (for tests; the connection is then not authenticated)'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -l tokens -d 'List each member\'s tokens'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from status" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from forget" -s a -l addr -d 'URL of an agent to ask (its /debug/ring; `ring owner`: its /agent/api/v1/ring/owner) [default: http://localhost:12345]' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from forget" -l kv -d 'Read the ring from the KV store: etcd://host:port[,host:port] (etcds:// for TLS) or embedded:PATH' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from forget" -l ring.prefix -d 'Key prefix of the ring in the KV store' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from forget" -l ca-file -d 'CA certificates (PEM) that sign the agent\'s or etcd\'s certificate, instead of the system\'s' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from forget" -l cert-file -d 'Client certificate (PEM) to present, with --key-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from forget" -l key-file -d 'Private key (PEM) of --cert-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from forget" -l server-name -d 'Verify the server\'s certificate against this name instead of the host' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from forget" -l kv-username -d 'etcd user' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from forget" -l kv-password-file -d 'File holding the etcd user\'s password (first line; a file, so it stays out of the process list and the shell history)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from forget" -l kvstore.prefix -d 'Key prefix of the configs in the KV store (agent.yaml\'s `scraping_service.kvstore.prefix`); target sharding\'s keys are next to it' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from forget" -l sharding.prefix -d 'Key prefix of target sharding\'s keys in the KV store [default: next to --kvstore.prefix, its last segment replaced by sharding/: configurations/ -> sharding/, prod/configurations/ -> prod/sharding/, as the agents write them]' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from forget" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from forget" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from forget" -l insecure-skip-verify -d 'Accept any server certificate (for tests; the connection is then not authenticated)'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from forget" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from forget" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from owner" -s a -l addr -d 'URL of an agent to ask (its /debug/ring; `ring owner`: its /agent/api/v1/ring/owner) [default: http://localhost:12345]' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from owner" -l kv -d 'Read the ring from the KV store: etcd://host:port[,host:port] (etcds:// for TLS) or embedded:PATH' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from owner" -l ring.prefix -d 'Key prefix of the ring in the KV store' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from owner" -l ca-file -d 'CA certificates (PEM) that sign the agent\'s or etcd\'s certificate, instead of the system\'s' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from owner" -l cert-file -d 'Client certificate (PEM) to present, with --key-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from owner" -l key-file -d 'Private key (PEM) of --cert-file' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from owner" -l server-name -d 'Verify the server\'s certificate against this name instead of the host' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from owner" -l kv-username -d 'etcd user' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from owner" -l kv-password-file -d 'File holding the etcd user\'s password (first line; a file, so it stays out of the process list and the shell history)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from owner" -l kvstore.prefix -d 'Key prefix of the configs in the KV store (agent.yaml\'s `scraping_service.kvstore.prefix`); target sharding\'s keys are next to it' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from owner" -l sharding.prefix -d 'Key prefix of target sharding\'s keys in the KV store [default: next to --kvstore.prefix, its last segment replaced by sharding/: configurations/ -> sharding/, prod/configurations/ -> prod/sharding/, as the agents write them]' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from owner" -l output -d 'Output format' -r -f -a "table\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from owner" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from owner" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from owner" -l insecure-skip-verify -d 'Accept any server certificate (for tests; the connection is then not authenticated)'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from owner" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from owner" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from help" -f -a "status" -d 'Show the ring\'s members, states, heartbeats and token ownership'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from help" -f -a "forget" -d 'Remove a member from the ring (what the Forget button of /debug/ring does)'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from help" -f -a "owner" -d 'Which agent scrapes a target, and why (scraping_service.sharding: targets)'
complete -c agentctl -n "__fish_agentctl_using_subcommand ring; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c agentctl -n "__fish_agentctl_using_subcommand wal; and not __fish_seen_subcommand_from inspect help" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand wal; and not __fish_seen_subcommand_from inspect help" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand wal; and not __fish_seen_subcommand_from inspect help" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand wal; and not __fish_seen_subcommand_from inspect help" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand wal; and not __fish_seen_subcommand_from inspect help" -f -a "inspect" -d 'Show what a WAL holds: series, samples, time range, per target and per metric'
complete -c agentctl -n "__fish_agentctl_using_subcommand wal; and not __fish_seen_subcommand_from inspect help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c agentctl -n "__fish_agentctl_using_subcommand wal; and __fish_seen_subcommand_from inspect" -s s -l selector -d 'Only count series matching this selector, e.g. `{job="node",instance=~"10.*"}`' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand wal; and __fish_seen_subcommand_from inspect" -s j -l job -d 'Only count series with this job label' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand wal; and __fish_seen_subcommand_from inspect" -s i -l instance -d 'Only count series with this instance label' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand wal; and __fish_seen_subcommand_from inspect" -l output -d 'Output format' -r -f -a "table\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand wal; and __fish_seen_subcommand_from inspect" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand wal; and __fish_seen_subcommand_from inspect" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand wal; and __fish_seen_subcommand_from inspect" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_using_subcommand wal; and __fish_seen_subcommand_from inspect" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand wal; and __fish_seen_subcommand_from help" -f -a "inspect" -d 'Show what a WAL holds: series, samples, time range, per target and per metric'
complete -c agentctl -n "__fish_agentctl_using_subcommand wal; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c agentctl -n "__fish_agentctl_using_subcommand completions" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand completions" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand completions" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand completions" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand man" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand man" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand man" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand man" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand config-check" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config-check" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand config-check" -s e -l expand-env -d 'Expand ${VAR} and ${VAR:-default} in the file (${1} is left as written)'
complete -c agentctl -n "__fish_agentctl_using_subcommand config-check" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand config-check" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand wal-stats" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand wal-stats" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand wal-stats" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand wal-stats" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand target-stats" -s j -l job -d 'Job label to match' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand target-stats" -s i -l instance -d 'Instance label to match' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand target-stats" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand target-stats" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand target-stats" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand target-stats" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand sample-stats" -s s -l selector -d 'Series selector, e.g. `{job="node"}`' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand sample-stats" -l log.level -d 'Only log messages with the given severity or above' -r -f -a "debug\t''
info\t''
warn\t''
error\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand sample-stats" -l log.format -d 'Log line format' -r -f -a "logfmt\t''
json\t''"
complete -c agentctl -n "__fish_agentctl_using_subcommand sample-stats" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand sample-stats" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from agent config config-sync ring wal completions man config-check wal-stats target-stats sample-stats help" -f -a "agent" -d 'Run the agent daemon'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from agent config config-sync ring wal completions man config-check wal-stats target-stats sample-stats help" -f -a "config" -d 'Validate and inspect configuration files'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from agent config config-sync ring wal completions man config-check wal-stats target-stats sample-stats help" -f -a "config-sync" -d 'Make the API\'s configs equal a directory of YAML files (plan, then apply)'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from agent config config-sync ring wal completions man config-check wal-stats target-stats sample-stats help" -f -a "ring" -d 'Inspect the hash ring of a cluster'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from agent config config-sync ring wal completions man config-check wal-stats target-stats sample-stats help" -f -a "wal" -d 'Inspect write-ahead logs'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from agent config config-sync ring wal completions man config-check wal-stats target-stats sample-stats help" -f -a "completions" -d 'Print a shell completion script to standard output'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from agent config config-sync ring wal completions man config-check wal-stats target-stats sample-stats help" -f -a "man" -d 'Print the man page (roff) to standard output'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from agent config config-sync ring wal completions man config-check wal-stats target-stats sample-stats help" -f -a "config-check" -d 'Old name of `config check` (prints `config valid` on success)'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from agent config config-sync ring wal completions man config-check wal-stats target-stats sample-stats help" -f -a "wal-stats" -d 'Old name of `wal inspect`'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from agent config config-sync ring wal completions man config-check wal-stats target-stats sample-stats help" -f -a "target-stats" -d 'Old name of `wal inspect --job J --instance I --by-metric`'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from agent config config-sync ring wal completions man config-check wal-stats target-stats sample-stats help" -f -a "sample-stats" -d 'Old name of `wal inspect --selector S --per-series`'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from agent config config-sync ring wal completions man config-check wal-stats target-stats sample-stats help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and __fish_seen_subcommand_from agent" -f -a "run" -d 'Run the clustered scraping daemon'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "check" -d 'Validate agent or instance config files; print every error'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "diff" -d 'Show what `config-sync DIR` would change, with a unified diff per changed config'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "list" -d 'List the stored configs (names; with --output json also their content hashes)'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "get" -d 'Print a stored config as YAML, secrets shown as <secret>'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "put" -d 'Validate FILE locally, then store it as config NAME (created or updated)'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "delete" -d 'Delete a stored config'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and __fish_seen_subcommand_from ring" -f -a "status" -d 'Show the ring\'s members, states, heartbeats and token ownership'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and __fish_seen_subcommand_from ring" -f -a "forget" -d 'Remove a member from the ring (what the Forget button of /debug/ring does)'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and __fish_seen_subcommand_from ring" -f -a "owner" -d 'Which agent scrapes a target, and why (scraping_service.sharding: targets)'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and __fish_seen_subcommand_from wal" -f -a "inspect" -d 'Show what a WAL holds: series, samples, time range, per target and per metric'
