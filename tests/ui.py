"""What every browser walk-through checks on every page it visits (issue 15): nothing wider
than the screen, no serious or critical axe-core violation, and a screenshot to look at.

axe-core is vendored under tests/vendor (from the npm registry: `npm pack axe-core@4.14.1`),
so the check runs offline and the same on every machine.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import ARTIFACTS

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
# The two widths every walk-through runs at: a laptop and a phone (iPhone 12-15, 390 x 844).
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
# WCAG 2.0 and 2.1, levels A and AA: what issue 15 asks kb to reach.
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
BLOCKING = {"serious", "critical"}


def overflow(page) -> dict:
    """How far the page scrolls sideways, and the widest elements that make it do so."""
    return page.evaluate(
        """() => {
          const doc = document.documentElement;
          const width = doc.clientWidth;
          const wide = [];
          for (const el of document.body.querySelectorAll('*')) {
            const r = el.getBoundingClientRect();
            if (r.right > width + 1 && r.width > 0) {
              const classes = typeof el.className === 'string' ? el.className.trim().split(/\\s+/) : [];
              const name = el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
                           classes.filter(Boolean).map((c) => '.' + c).join('');
              wide.push(`${name} right=${Math.round(r.right)}`);
            }
          }
          return {scroll: doc.scrollWidth, width: width, wide: wide.slice(0, 8)};
        }"""
    )


def assert_no_overflow(page) -> None:
    o = overflow(page)
    assert o["scroll"] <= o["width"] + 1, (
        f"{page.url} is {o['scroll']} px wide on a {o['width']} px screen: {o['wide']}"
    )


def axe_violations(page) -> list[dict]:
    """axe-core's serious and critical WCAG 2.1 A/AA violations on the page as it is now."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        # Evaluated, not added as a <script>: kb's CSP (script-src 'self') refuses inline scripts.
        page.evaluate(AXE.read_text(encoding="utf-8"))
    result = page.evaluate(
        "async (tags) => await axe.run(document, {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']})",
        AXE_TAGS,
    )
    return [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [n["target"] for n in v["nodes"]][:5],
        }  # fmt: skip
        for v in result["violations"]
        if v["impact"] in BLOCKING
    ]


def assert_accessible(page) -> None:
    found = axe_violations(page)
    assert not found, f"axe-core on {page.url}:\n{json.dumps(found, indent=1)}"


def check_page(page, name: str, *, full_page: bool = True) -> Path:
    """Screenshot the page as tests/artifacts/<name>-<width>.png, then assert it fits the
    screen and passes axe-core. The screenshot comes first so a failure can be looked at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    width = page.viewport_size["width"]
    path = ARTIFACTS / f"{name}-{width}.png"
    # A full-page screenshot stretches the viewport over the whole page, so a sticky element
    # (the ask box) is drawn over whatever ends the page's first screen: pin them in place for
    # the picture only. Whether it covers anything while reading is tested in test_e2e_chat.
    unstick = full_page and page.evaluate(
        """() => {
          const stuck = [...document.querySelectorAll('body *')].filter(
            (el) => getComputedStyle(el).position === 'sticky' && !el.closest('header'));
          stuck.forEach((el) => el.style.setProperty('position', 'static'));
          window.kbUnstuck = stuck;
          return stuck.length;
        }"""
    )
    page.screenshot(path=str(path), full_page=full_page)
    if unstick:
        page.evaluate("() => window.kbUnstuck.forEach((el) => el.style.removeProperty('position'))")
    assert_no_overflow(page)
    assert_accessible(page)
    return path
