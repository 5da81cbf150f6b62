"""Browser tests: Debian's Chromium, driven by Playwright, against the real app.

They check what a person sees on the page; tests/test_*.py check the bytes
on the wire. Run them with ``python -m pytest tests/e2e``.
"""
