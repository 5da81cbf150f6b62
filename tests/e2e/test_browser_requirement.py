"""Without Chromium the browser tests skip and say how to install it, except in CI.

These run without a browser: they check the rule the ``browser`` fixture follows.
"""

import pytest

from tests.e2e.conftest import require

MISSING = "/usr/bin/chromium not found; install it with `apt-get install chromium`"


def test_a_missing_browser_skips_with_the_install_command():
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        require(False, MISSING, environ={})


@pytest.mark.parametrize("value", ["1", "yes"])
def test_a_missing_browser_fails_when_the_browser_is_required(value):
    with pytest.raises(pytest.fail.Exception, match="REQUIRE_BROWSER is set"):
        require(False, MISSING, environ={"REQUIRE_BROWSER": value})


@pytest.mark.parametrize("environ", [{}, {"REQUIRE_BROWSER": "0"}, {"REQUIRE_BROWSER": ""}])
def test_require_browser_off_still_skips(environ):
    with pytest.raises(pytest.skip.Exception):
        require(False, MISSING, environ=environ)


def test_nothing_happens_when_the_browser_is_there():
    require(True, MISSING, environ={"REQUIRE_BROWSER": "1"})
