"""The operator console in a real browser: headless Chromium (through chromedriver) opens
``/console/`` on a live demo (plant on Modbus TCP, controller, API), reads what the page
drew, is refused with a bad token and with a viewer's, acknowledges an alarm as an
operator, which the audit log then shows, and shows the grid company's token what it may
read.

Selenium blocks: every call to it runs in a thread so that the demo's loop keeps running.
``VPP_SAVE_SCREENSHOT=1`` copies the screenshot to docs/img/console.png.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from sim.inject import FaultInjector
from sim.scenario import FaultAction, FaultType
from tests.conftest import ROOT, require_tool
from tests.e2e.test_chain import midday
from vpp.config import SiteConfig
from vpp.demo import Demo, DemoOptions

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1366,900")

# what the page shows, read from its elements and data- attributes
STATE_JS = """
const q = (s) => document.querySelector(s);
const shown = (e) => e !== null && !e.hidden;
return {
  url: location.href,
  stored: sessionStorage.getItem("vpp.console.token"),
  refreshes: Number(document.body.dataset.refreshes || 0),
  site: q("#site").textContent, clock: q("#clock").textContent, tz: q("#tz").textContent,
  overall: q("#overall").dataset.status,
  banner: shown(q("#banner")) ? q("#banner").textContent : "",
  login: shown(q("#login")),
  pcc_points: Number(q("#pcc-chart").dataset.points),
  fc_band: Number(q("#fc-chart").dataset.band), fc_series: q("#fc-chart").dataset.series || "",
  soc_points: Number(q("#soc-chart").dataset.points),
  curtail_points: Number(q("#curtail-chart").dataset.points),
  plan: q("#plan-status") ? q("#plan-status").textContent : "",
  devices: Object.fromEntries([...document.querySelectorAll("#device-rows tr[data-asset]")]
    .map((r) => [r.dataset.asset, r.querySelector(".health").textContent])),
  alarms: Object.fromEntries([...document.querySelectorAll("#alarm-rows tr[data-key]")]
    .map((r) => [r.dataset.key, {button: r.querySelector("button.ack") !== null,
                                 acked: r.querySelector(".acked").textContent}])),
  drawn_to_size: [...document.querySelectorAll("canvas.chart")].every(
    (c) => c.width === Math.round(c.clientWidth * (window.devicePixelRatio || 1))),
  alarm_error: shown(q("#alarm-error")) ? q("#alarm-error").textContent : "",
  panel_errors: [...document.querySelectorAll(".error.fetch")].filter(shown)
    .map((e) => e.textContent),
};
"""


def _chromium(binary: str, driver: str, profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


class Page:
    """The console in the browser, driven from the event loop."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def state(self) -> dict[str, Any]:
        return await self.run(self.driver.execute_script, STATE_JS)  # type: ignore[no-any-return]

    async def until(self, ok: Callable[[dict[str, Any]], bool], what: str,
                    timeout_s: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            st = await self.state()
            if ok(st):
                return st
            if time.monotonic() > deadline:
                pytest.fail(f"the console did not show {what} within {timeout_s:g} s: {st}")
            await asyncio.sleep(0.5)

    async def click(self, css: str) -> None:
        """Click an element as a person would (the page redraws its tables every refresh:
        an element found may be replaced before the click; then find it again)."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By

        def click() -> None:
            for _ in range(5):
                try:
                    e = self.driver.find_element(By.CSS_SELECTOR, css)
                    self.driver.execute_script(
                        "arguments[0].scrollIntoView({block: 'center'})", e)
                    e.click()
                    return
                except StaleElementReferenceException:
                    continue
            raise AssertionError(f"{css} kept being redrawn under the click")
        await self.run(click)

    async def sign_in(self, token: str) -> None:
        from selenium.webdriver.common.by import By

        box = await self.run(self.driver.find_element, By.ID, "token-input")
        await self.run(box.send_keys, token)
        await self.click("#login button[type=submit]")

    async def screenshot(self, path: Path) -> None:
        """The whole page at the window's width: the view is made as tall as the page, and
        the page redraws its charts for it (it does on a resize) before the picture."""
        cdp = self.driver.execute_cdp_cmd
        height = await self.run(self.driver.execute_script,
                                "return document.documentElement.scrollHeight")
        await self.run(cdp, "Emulation.setDeviceMetricsOverride", {
            "width": 1366, "height": height, "deviceScaleFactor": 1, "mobile": False})
        try:
            await self.until(lambda s: s["drawn_to_size"], "the charts redrawn", 10)
            shot = await self.run(cdp, "Page.captureScreenshot", {"format": "png"})
        finally:
            await self.run(cdp, "Emulation.clearDeviceMetricsOverride", {})
        await self.run(path.write_bytes, base64.b64decode(shot["data"]))


def _minutes_apart(clock: str, now: datetime) -> int:
    """How far the page's clock (HH:MM:SS) is from ``now``'s time of day [minutes]."""
    h, m, _ = (int(x) for x in clock.split(":"))
    d = abs(h * 60 + m - (now.hour * 60 + now.minute))
    return min(d, 1440 - d)


def _live(st: dict[str, Any], assets: set[str]) -> bool:
    return (st["pcc_points"] > 10 and st["fc_band"] > 4 and st["soc_points"] > 10
            and st["plan"] not in ("", "–") and set(st["devices"]) == assets
            and all(h in ("online", "degraded", "offline") for h in st["devices"].values()))


async def test_the_console_shows_the_plant_live_and_acknowledges_an_alarm(
        demo_config: SiteConfig, tmp_path: Path) -> None:
    chromium = require_tool("chromium", "chromium")
    chromedriver = require_tool("chromedriver", "chromium-driver")
    cfg = midday(demo_config)
    assets = {a.id for a in cfg.assets}
    tz = ZoneInfo(cfg.site.timezone)
    demo = Demo(cfg, DemoOptions(hours=1.5, speed=600.0, ephemeral_ports=True))
    async with demo:
        svc = demo.services
        assert svc is not None and svc.api is not None
        token = await svc.issue_token("operator", "console-test")
        viewer = await svc.issue_token("viewer", "console-viewer")
        grid = await svc.issue_token("grid", "console-grid")
        base = f"{svc.api.url}/console/"
        driver = await asyncio.to_thread(_chromium, chromium, chromedriver, tmp_path / "chromium")
        page = Page(driver)
        try:
            # no token: the form to paste one, and the public health in the header
            await page.run(driver.get, base)
            st = await page.until(lambda s: s["login"] and s["site"] == cfg.site.id,
                                  "the token form", 20)
            assert not st["banner"]
            # a token the API does not know: refused, said so, asked again
            await page.run(driver.get, base + "#token=not-a-token")
            st = await page.until(lambda s: "401" in s["banner"], "the 401 refusal", 20)
            assert st["login"] and "bearer token" in st["banner"] and st["stored"] is None

            # an operator's token in the fragment: kept for the tab, gone from the address
            await page.run(driver.get, base + "#token=" + token)
            st = await page.until(lambda s: _live(s, assets), "live data")
            assert st["url"] == base and token not in st["url"] and st["stored"] == token
            assert not st["login"] and not st["banner"] and not st["panel_errors"]
            assert st["plan"] == "optimal" and st["fc_series"] in ("pv1", "wf1", "load")
            assert st["overall"] in ("ok", "degraded") and st["curtail_points"] > 10
            # the clock and axes are the site's local time (Beijing time), not UTC
            assert cfg.site.timezone in st["tz"] and "UTC+08:00" in st["tz"]
            assert _minutes_apart(st["clock"], demo.clock.now().astimezone(tz)) <= 60, (
                st["clock"], demo.clock.now())
            shot = tmp_path / "console.png"
            await page.screenshot(shot)
            if os.environ.get("VPP_SAVE_SCREENSHOT") == "1":
                await asyncio.to_thread(shutil.copy, shot, ROOT / "docs" / "img" / "console.png")

            # the wind farm stops answering: its alarm comes up with an Acknowledge button
            key = "device_offline:wf1"
            async with FaultInjector(demo.sim) as faults:
                faults.inject(FaultAction(device="wf1", kind=FaultType.OFFLINE))
                await page.until(lambda s: s["devices"].get("wf1") == "offline"
                                 and s["alarms"].get(key, {}).get("button", False),
                                 f"{key} with its button")
                await page.screenshot(tmp_path / "console-alarm.png")
                # a viewer may look but not acknowledge: the page says which role may
                await page.click("#signout")
                await page.until(lambda s: s["login"], "the token form again", 20)
                await page.sign_in(viewer)
                await page.until(lambda s: not s["login"] and key in s["alarms"],
                                 "the alarms to a viewer", 20)
                await page.click(f'button.ack[data-key="{key}"]')
                st = await page.until(lambda s: "403" in s["alarm_error"], "the 403 refusal", 20)
                assert key in st["alarm_error"] and "operator" in st["alarm_error"]
                # the operator acknowledges it
                await page.click("#signout")
                await page.until(lambda s: s["login"], "the token form again", 20)
                await page.sign_in(token)
                await page.until(lambda s: s["alarms"].get(key, {}).get("button", False),
                                 "the button to the operator", 20)
                await page.click(f'button.ack[data-key="{key}"]')
                st = await page.until(lambda s: "console-test" in s["alarms"][key]["acked"],
                                      "the acknowledgement", 20)
                assert not st["alarm_error"]
            # the grid company's token reads forecasts and the plan, not the plant
            await page.click("#signout")
            await page.until(lambda s: s["login"], "the token form again", 20)
            await page.sign_in(grid)
            st = await page.until(lambda s: "403" in s["banner"] and s["fc_band"] > 4,
                                  "the forecasts to the grid, the rest refused", 20)
            assert "read:plant" in st["banner"] and st["plan"] == "optimal"
            assert not st["devices"] and any("403" in e for e in st["panel_errors"])
            logs = await page.run(driver.get_log, "browser")
        finally:
            await asyncio.to_thread(driver.quit)
        async with httpx.AsyncClient(base_url=svc.api.url, timeout=10) as http:
            audit = (await http.get("/api/v1/audit", headers={
                "Authorization": f"Bearer {token}"})).json()["entries"]
        await demo.wait()
    acks = [e for e in audit if e["action"] == "alarm-ack"]
    assert any(e["actor"] == "console-test" and e["role"] == "operator"
               and e["channel"] == "http" and e["params"] == {"alarm": key} and e["ok"]
               for e in acks), acks
    assert any(e["actor"] == "console-viewer" and e["role"] == "viewer" and not e["ok"]
               for e in acks), acks
    # no script error in the page (refused calls are logged by the browser as network errors)
    assert not [e for e in logs if e.get("source") == "javascript"], logs
