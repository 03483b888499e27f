"""`measure.serving.answers`, the readiness poll of every server the project and its tests start:
a server that is up but slow, or not listening yet, is "not ready yet", never an error."""

import socket

from mnist_lab.measure.serving import answers, free_port


def test_a_server_that_accepts_but_answers_late_is_not_ready_yet():
    # A listening socket that never replies: the connection succeeds, the read times out.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        assert answers(f"http://127.0.0.1:{port}/health", timeout=0.2) is False


def test_a_port_nobody_listens_on_is_not_ready_yet():
    assert answers(f"http://127.0.0.1:{free_port()}/health", timeout=0.2) is False
