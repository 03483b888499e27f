"""Exit statuses: 2 for a command line that does not parse, 1 for a lab error, 130 for Ctrl-C."""

import socket

import mlflow
import pytest

from mnist_lab import cli
from mnist_lab.errors import EXIT_INTERRUPTED, EXIT_LAB_ERROR, EXIT_USAGE, ConfigError


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["no-such-command"],
        ["train", "--no-such-flag"],
        ["register"],  # --model is required
        ["predict", "--json", "extra", "--model-uri"],  # a flag without its value
    ],
)
def test_a_command_line_that_does_not_parse_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == EXIT_USAGE == 2
    assert "usage: mnist-lab" in capsys.readouterr().err


def test_a_lab_error_exits_1_with_its_message(mlflow_store, capsys):
    assert cli.main(["train", "--model", "cnn", "--lr", "0"]) == EXIT_LAB_ERROR == 1
    err = capsys.readouterr().err
    assert "lr=0.0 must be > 0" in err and "Traceback" not in err


def test_an_unreachable_tracking_server_is_a_lab_error(mlflow_store, monkeypatch, capsys):
    with socket.socket() as free:  # a port nothing listens on once closed
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
    assert cli.main(["runs", "--stale"]) == EXIT_LAB_ERROR
    err = capsys.readouterr().err
    assert f"cannot open the MLflow tracking store http://127.0.0.1:{port}" in err
    assert "reachable" in err and "Traceback" not in err


@pytest.mark.parametrize(("raised", "status"), [(KeyboardInterrupt, 130), (ConfigError, 1)])
def test_what_a_command_raises_sets_the_status(mlflow_store, monkeypatch, raised, status):
    def handler(args):
        raise raised("stopped")

    monkeypatch.setattr(cli, "cmd_runs", handler)
    assert cli.main(["runs", "--stale"]) == status
    assert EXIT_INTERRUPTED == 130


@pytest.mark.parametrize("command", [[], ["train"], ["tune"], ["compare"], ["register"]])
def test_help_states_the_exit_statuses(command, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([*command, "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "1 a lab error" in out and "2 a usage error" in out and "130 interrupted" in out
