#!/bin/sh
# freshet image entrypoint: `jobmanager` and `taskmanager` start Flink in the foreground (logs to stdout);
# anything else runs as given (`freshet serve ...`, `freshet job submit ...`, `flink list`).
set -eu

case "${1:-}" in
    jobmanager)
        shift
        exec "${FLINK_HOME}/bin/jobmanager.sh" start-foreground "$@"
        ;;
    taskmanager)
        shift
        exec "${FLINK_HOME}/bin/taskmanager.sh" start-foreground "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
