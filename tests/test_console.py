"""The console: the saeuron logger's plain lines on stdout, and Ray quiet unless verbose."""

import logging

from saeuron import console


def test_lines_are_plain_go_to_the_current_stdout_and_are_not_doubled(capsys, monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    console.setup_console()
    console.setup_console()  # every job's parse_config calls it; a second call adds no handler
    console.logger.info("collect: 160 prompts")
    console.logger.debug("hidden unless verbose")
    console.logger.warning("something odd")
    assert capsys.readouterr().out == "collect: 160 prompts\nwarning: something odd\n"
    assert console.ray_init_kwargs() == {"logging_level": logging.WARNING, "log_to_driver": False}


def test_verbose_shows_debug_lines_and_ray_output(capsys, monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    try:
        console.setup_console(verbose=True)
        console.logger.debug("[hookpoint] step 20/270")
        assert capsys.readouterr().out == "[hookpoint] step 20/270\n"
        assert console.ray_init_kwargs()["log_to_driver"] and console.tune_verbosity() == 1
    finally:
        console.setup_console()
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    assert console.is_verbose()
