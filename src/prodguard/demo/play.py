"""Play a project's demo story end to end: a clean data folder, the story, the summary page."""

from __future__ import annotations

import time

from rich.console import Console

from prodguard.config import Settings
from prodguard.demo.runner import DemoRun, Story
from prodguard.demo.summary import print_summary, write_summary
from prodguard.errors import ConfigError
from prodguard.project import import_object


def load_story(settings: Settings) -> Story:
    if settings.demo is None:
        raise ConfigError("prodguard.yaml has no 'demo' section (story: module:attribute)")
    return import_object(settings.demo.story, "demo.story")


def run_demo(settings: Settings, console: Console, short: bool = False) -> DemoRun:
    """Play the project's story from a clean data folder; the service is stopped whatever
    happens, and the records written so far are kept."""
    story = load_story(settings)
    assert settings.config_path is not None
    run = DemoRun(settings.config_path, story, console)
    try:
        story.play(run, short)
    finally:
        run.stop_service()
        run.collect()
        run.save()
    run.figures["seconds"] = round(time.perf_counter() - run.began, 1)
    page = write_summary(run)
    print_summary(run, page)
    return run
