#!/usr/bin/env bash
# Minimal option parser with Kaldi's parse_options.sh semantics (the espnet wheel
# ships none): `--foo-bar VALUE` or `--foo_bar VALUE` sets the existing shell
# variable foo_bar; booleans must be true/false; `--help` prints $help_message.
# Source it after the defaults are set: `. parse_options.sh`.
while [ $# -gt 0 ]; do
    case "$1" in
    --help|-h)
        echo "${help_message:-no help}"; exit 0 ;;
    --*)
        name=$(echo "${1#--}" | tr '-' '_')
        if [ -z "${name}" ] || ! declare -p "${name}" >/dev/null 2>&1; then
            echo "$0: unknown option $1" >&2; exit 1
        fi
        if [ $# -lt 2 ]; then
            echo "$0: option $1 needs a value" >&2; exit 1
        fi
        old=$(eval echo "\$${name}")
        if { [ "${old}" = true ] || [ "${old}" = false ]; } && [ "$2" != true ] && [ "$2" != false ]; then
            echo "$0: option $1 takes true or false, got '$2'" >&2; exit 1
        fi
        printf -v "${name}" '%s' "$2"
        shift 2 ;;
    *)
        break ;;
    esac
done
