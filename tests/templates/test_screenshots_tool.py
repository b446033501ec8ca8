"""`make screenshots` (infra/dev/screenshots.py) is a dev tool that needs Chromium, which the
tests do not: this only proves the script still loads against the deployer it builds with
(it imports the renderer and the build sandbox, which move)."""

from __future__ import annotations

import subprocess
import sys

from shared.settings import PROJECT_ROOT


def test_the_screenshot_script_loads_and_explains_itself() -> None:
    result = subprocess.run(
        [sys.executable, "infra/dev/screenshots.py", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "headless Chromium" in result.stdout and "--width" in result.stdout
