"""The dashboard in a real headless Chromium, against a real `labq server`
over a home where a real experiment ran (the ``served`` fixture): each page
shows the run's data, the results table sorts, the charts draw, pictures
load, the live log shows the job's output, and no page logs a console error.
A screenshot of every page goes to ``served.shots``.  The browser tests skip
where Chromium or its driver is absent; the plain-HTTP checks of the pages
(login, redirects, the content security policy) run everywhere."""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the plain-HTTP tests below still run
    webdriver = None

if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    NO_BROWSER = (f"the browser tests need {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install chromium "
                  "chromium-driver)")
elif webdriver is None:
    NO_BROWSER = "the browser tests need selenium (pip install '.[dev]')"
else:
    NO_BROWSER = None

WAIT = 20  # seconds an explicit wait may take (a cold Chromium, plotly's 4.8 MB parsed once)
STREAM_WAIT = 30  # the live log: the server polls the run dir


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def driver():
    if NO_BROWSER:
        pytest.skip(NO_BROWSER)
    profile = tempfile.mkdtemp(prefix="labq-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                # The parallel-coordinates plot is WebGL: software WebGL (SwiftShader) without a GPU.
                "--enable-unsafe-swiftshader",
                "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    chrome.set_page_load_timeout(60)
    try:
        yield chrome
    finally:
        chrome.quit()
        shutil.rmtree(profile, ignore_errors=True)


def api_get(served, path: str):
    """What the JSON API says, read with the token (what the page should show)."""
    request = urllib.request.Request(served.url + path, headers={"Authorization": f"Bearer {served.token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def wait(driver, condition, timeout: float = WAIT, message: str = ""):
    """``condition`` true within ``timeout`` (a table re-rendered under a check is looked at again)."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(condition, message)


def console_errors(driver) -> list[str]:
    """The console's SEVERE entries since the last call (reading them clears them)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def no_console_errors(driver, page: str) -> None:
    errors = console_errors(driver)
    assert not errors, f"{page}: the browser console has errors: {errors}"


def shoot(driver, served, name: str) -> None:
    """The whole page, not only the window, as ``served.shots/<name>.png``."""
    shots = Path(served.shots)
    shots.mkdir(parents=True, exist_ok=True)
    try:
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        (shots / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
    except Exception:  # a driver without the DevTools call: the window alone
        driver.save_screenshot(str(shots / f"{name}.png"))


def text_of(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def open_page(driver, served, path: str, ready_css: str):
    """Go to ``path`` (logging in first when the browser has no cookie) and wait
    until ``ready_css`` is there."""
    driver.get(served.url + path)
    if urllib.parse.urlparse(driver.current_url).path == "/login":
        log_in(driver, served.token)
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, ready_css)), message=f"{path}: {ready_css}")


def log_in(driver, token: str) -> None:
    field = wait(driver, EC.presence_of_element_located((By.ID, "token")))
    field.clear()
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form[action='/login'] button[type='submit']").click()


def column_index(driver, table_css: str, key: str) -> int:
    """Which cell of a row holds column ``key`` of the results table."""
    headers = driver.find_elements(By.CSS_SELECTOR, f"{table_css} thead th")
    for i, th in enumerate(headers):
        if th.get_attribute("data-key") == key:
            return i
    raise AssertionError(f"no column {key!r} in {table_css}")


def column_values(driver, key: str) -> list[str]:
    index = column_index(driver, "#results", key)
    return driver.execute_script(
        "return [...document.querySelectorAll('#results tbody tr')].map(r => r.cells[arguments[0]].textContent)",
        index)


# ---------------------------------------------------------------- login

def test_login_refuses_a_wrong_token_then_lets_the_right_one_in(driver, served):
    driver.get(served.url + "/nodes")
    wait(driver, EC.url_contains("/login"))
    assert "next=%2Fnodes" in driver.current_url
    log_in(driver, "not-a-token")
    error = wait(driver, EC.visibility_of_element_located((By.ID, "login-error")))
    assert "wrong token" in error.text
    console_errors(driver)  # the 401 of the refused form is logged by Chromium: expected
    shoot(driver, served, "login-refused")

    log_in(driver, served.token)
    wait(driver, lambda d: urllib.parse.urlparse(d.current_url).path == "/nodes", message="back to /nodes")
    wait(driver, EC.text_to_be_present_in_element((By.ID, "who"), served.user))
    cookie = driver.get_cookie("labq_token")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert driver.execute_script("return document.cookie").find(served.token) < 0  # HttpOnly: no script reads it
    no_console_errors(driver, "login")


# ---------------------------------------------------------------- the queue

def test_the_queue_shows_the_pending_job_and_why_it_waits(driver, served):
    queue = api_get(served, "/api/v1/queue?limit=50")
    pending = next(j for j in queue["jobs"] if j["id"] == served.pending_job_id)
    assert pending["reason"], "the fixture's pending job should have a reason"

    open_page(driver, served, "/", f"#queue tbody tr[data-job='{served.pending_job_id}']")
    row = driver.find_element(By.CSS_SELECTOR, f"#queue tbody tr[data-job='{served.pending_job_id}']")
    assert pending["reason"] in row.text
    assert pending["experiment"] in row.text
    assert "pending" in row.text
    link = row.find_element(By.CSS_SELECTOR, "td:nth-child(2) a")
    assert link.get_attribute("href").endswith("/experiments/" + urllib.parse.quote(pending["experiment"], safe=""))
    assert str(queue["total"]) in text_of(driver, "#summary")
    banner = driver.find_element(By.ID, "banner")
    assert banner.is_displayed() == bool(queue["unplaced"] or queue.get("warning"))
    shoot(driver, served, "queue")
    no_console_errors(driver, "queue")


# ---------------------------------------------------------------- experiments

def test_the_experiments_list_links_to_the_experiment(driver, served):
    open_page(driver, served, "/experiments", f"#experiments tbody tr[data-experiment='{served.experiment}']")
    row = driver.find_element(By.CSS_SELECTOR, f"#experiments tbody tr[data-experiment='{served.experiment}']")
    listed = api_get(served, "/api/v1/experiments?limit=50")
    mine = next(e for e in listed["experiments"] if e["name"] == served.experiment)
    assert str(mine["jobs"]) in row.text and "succeeded" in row.text
    shoot(driver, served, "experiments")
    no_console_errors(driver, "experiments")
    row.find_element(By.LINK_TEXT, served.experiment).click()
    wait(driver, EC.url_contains("/experiments/" + urllib.parse.quote(served.experiment, safe="")))
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "#results tbody tr[data-job]")))


def test_the_results_table_shows_every_job_and_sorts_by_a_clicked_header(driver, served):
    results = api_get(served, f"/api/v1/results/{urllib.parse.quote(served.experiment, safe='')}?limit=50")
    metric = results["metric"]
    assert metric, "the fixture's experiment should report a metric"
    open_page(driver, served, f"/experiments/{urllib.parse.quote(served.experiment, safe='')}",
              "#results tbody tr[data-job]")
    rows = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr[data-job]")
    shown = {int(tr.get_attribute("data-job")) for tr in rows}
    assert shown == {r["job_id"] for r in results["rows"]}
    assert set(served.job_ids) <= shown
    for param in results["varying_params"]:
        column_index(driver, "#results", param)  # a column per swept param

    def numbers() -> list[float]:
        return [float(v) for v in column_values(driver, metric) if v not in ("–", "")]

    before = numbers()
    assert len(before) >= 2
    header = driver.find_element(By.CSS_SELECTOR, f"#results thead th[data-key='{metric}']")
    first_order = header.get_attribute("aria-sort")
    assert first_order in ("ascending", "descending")  # ranked by the main metric to begin with
    assert before == sorted(before, reverse=first_order == "descending")

    header.find_element(By.CSS_SELECTOR, "button").click()
    flipped = "descending" if first_order == "ascending" else "ascending"
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, f"#results thead th[data-key='{metric}']")
         .get_attribute("aria-sort") == flipped, message="the header's sort order flips")
    after = numbers()
    assert after == sorted(before, reverse=flipped == "descending")
    if len(set(before)) > 1:
        assert after != before
    assert f"sort={metric}" in driver.current_url

    # Sorting by a job field: ids in order.
    driver.find_element(By.CSS_SELECTOR, "#results thead th[data-key='job_id'] button").click()
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#results thead th[data-key='job_id']")
         .get_attribute("aria-sort") == "ascending")
    ids = [int(v) for v in column_values(driver, "job_id")]
    assert ids == sorted(ids)
    no_console_errors(driver, "results sorted")


def test_the_filter_box_hides_rows_that_do_not_match(driver, served):
    results = api_get(served, f"/api/v1/results/{urllib.parse.quote(served.experiment, safe='')}?limit=50")
    open_page(driver, served, f"/experiments/{urllib.parse.quote(served.experiment, safe='')}",
              "#results tbody tr[data-job]")
    visible = "return [...document.querySelectorAll('#results tbody tr[data-job]')].filter(r => !r.hidden).length"
    box = driver.find_element(By.ID, "filter")
    box.send_keys("no-such-value-anywhere")
    wait(driver, lambda d: d.execute_script(visible) == 0)
    box.clear()
    box.send_keys("succeeded")
    expected = sum(1 for r in results["rows"] if "succeeded" in r["state"])
    wait(driver, lambda d: d.execute_script(visible) == expected)
    no_console_errors(driver, "results filtered")


def test_the_parallel_coordinates_plot_draws_the_params_and_the_metric(driver, served):
    results = api_get(served, f"/api/v1/results/{urllib.parse.quote(served.experiment, safe='')}?limit=1000")
    open_page(driver, served, f"/experiments/{urllib.parse.quote(served.experiment, safe='')}", "#results tbody tr")
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "#parcoords .parcoords")),
         message="plotly draws a parcoords")
    labels = driver.execute_script(
        "const d = document.getElementById('parcoords').data; return d ? d[0].dimensions.map(x => x.label) : null")
    assert labels is not None and labels[-1] == results["metric"]
    assert set(labels[:-1]) <= set(results["varying_params"]) and len(labels) >= 2
    shoot(driver, served, "experiment")
    no_console_errors(driver, "parallel coordinates")


def test_ticking_two_jobs_draws_their_two_curves(driver, served):
    open_page(driver, served, f"/experiments/{urllib.parse.quote(served.experiment, safe='')}",
              "#results tbody tr[data-job] input.pick")
    boxes = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr[data-job] input.pick")[:2]
    picked = [int(b.get_attribute("data-job")) for b in boxes]
    for box in boxes:
        box.click()
    traces = "return document.querySelectorAll('#curves .scatterlayer .trace').length"
    wait(driver, lambda d: d.execute_script(traces) == 2, message="two curves drawn")
    names = driver.execute_script("return document.getElementById('curves').data.map(t => t.name)")
    assert sorted(names) == sorted(f"job {i}" for i in picked)
    points = driver.execute_script("return document.getElementById('curves').data.map(t => t.x.length)")
    assert all(n >= 2 for n in points)
    shoot(driver, served, "experiment-curves")
    boxes[1].click()
    wait(driver, lambda d: d.execute_script(traces) == 1, message="unticking removes a curve")
    no_console_errors(driver, "curves")


def test_a_jobs_png_artifact_shows_as_a_picture(driver, served):
    open_page(driver, served, f"/experiments/{urllib.parse.quote(served.experiment, safe='')}",
              "#results tbody tr[data-job] button.files-button")
    job_id = served.job_ids[0]
    driver.find_element(By.CSS_SELECTOR, f"#results tbody tr[data-job='{job_id}'] button.files-button").click()
    image = wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "#files img.artifact")),
                 message="an <img> for the PNG")
    wait(driver, lambda d: d.execute_script("const i = arguments[0]; return i.complete && i.naturalWidth > 0", image),
         message="the PNG loads")
    assert image.get_attribute("src").startswith(f"{served.url}/api/v1/jobs/{job_id}/files/")
    assert image.get_attribute("alt").lower().endswith(".png")
    driver.execute_script("arguments[0].scrollIntoView()", image)
    shoot(driver, served, "experiment-files")
    no_console_errors(driver, "artifacts")


# ---------------------------------------------------------------- a job

def test_the_job_page_shows_attempts_events_and_the_live_log(driver, served):
    job_id = served.job_ids[0]
    status = api_get(served, f"/api/v1/status/{job_id}")
    out = api_get(served, f"/api/v1/jobs/{job_id}/logs?stream=both")
    text = "".join(base64.b64decode(c["data"]).decode("utf-8", "replace") for c in out["chunks"])
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), None)

    open_page(driver, served, f"/jobs/{job_id}", "#attempts tbody tr")
    wait(driver, EC.text_to_be_present_in_element((By.ID, "log-state"), "complete"), timeout=STREAM_WAIT,
         message="the log stream ends with its done line")
    if first_line:
        assert first_line in driver.find_element(By.ID, "log").text
    else:
        assert "(no output)" in driver.find_element(By.ID, "log").text
    stderr = [c for c in out["chunks"] if c["stream"] == "stderr"]
    if stderr:
        assert driver.find_elements(By.CSS_SELECTOR, "#log .stream-stderr")
    details = text_of(driver, "#details")
    assert status["job"]["experiment"] in details
    assert text_of(driver, "#state-badge") == status["job"]["state"]
    for name in status["job"]["params"]:
        assert name in details
    attempts = driver.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")
    assert len(attempts) == len(status["attempts"])
    assert status["attempts"][-1]["state"] in attempts[-1].text
    events = driver.find_elements(By.CSS_SELECTOR, "#events tbody tr")
    assert len(events) == max(1, len(status["events"]))
    if status["events"]:
        assert status["events"][0]["kind"] in events[0].text
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "#files img.artifact")))
    shoot(driver, served, "job")
    no_console_errors(driver, "job")


def test_the_pending_jobs_page_says_why_it_waits(driver, served):
    status = api_get(served, f"/api/v1/status/{served.pending_job_id}")
    open_page(driver, served, f"/jobs/{served.pending_job_id}", "#details dt")
    if status["job"]["state"] == "pending":
        wait(driver, EC.text_to_be_present_in_element((By.ID, "details"), status["job"]["reason"]))
        assert "why waiting" in text_of(driver, "#details")
    shoot(driver, served, "job-pending")
    no_console_errors(driver, "pending job")


# ---------------------------------------------------------------- nodes and usage

def test_the_nodes_page_lists_each_node(driver, served):
    nodes = api_get(served, "/api/v1/nodes")["nodes"]
    assert nodes, "the fixture's scheduler should have recorded its node"
    open_page(driver, served, "/nodes", "#nodes tbody tr[data-node]")
    rows = driver.find_elements(By.CSS_SELECTOR, "#nodes tbody tr[data-node]")
    assert len(rows) == len(nodes)
    table = text_of(driver, "#nodes")
    for node in nodes:
        assert node["address"] in table
    shoot(driver, served, "nodes")
    no_console_errors(driver, "nodes")


def test_the_usage_page_shows_each_user_and_queue_and_switches_period(driver, served):
    by_user = api_get(served, "/api/v1/usage?since=30d&by=user")["rows"]
    by_queue = api_get(served, "/api/v1/usage?since=30d&by=queue")["rows"]
    open_page(driver, served, "/usage?since=30d", "#usage-user tbody tr")
    wait(driver, lambda d: "Loading" not in text_of(d, "#summary"))
    users = text_of(driver, "#usage-user tbody")
    for row in by_user:
        assert row["user"] in users
    queues = text_of(driver, "#usage-queue tbody")
    for row in by_queue:
        assert row["queue"] in queues
    if by_user:
        wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "#plot-user .barlayer")))
    assert driver.find_element(By.CSS_SELECTOR, ".periods a[data-since='30d']").get_attribute("aria-current")
    shoot(driver, served, "usage")
    no_console_errors(driver, "usage")
    driver.find_element(By.CSS_SELECTOR, ".periods a[data-since='12h']").click()
    wait(driver, EC.url_contains("since=12h"))
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, ".periods a[data-since='12h']")
         .get_attribute("aria-current"))
    no_console_errors(driver, "usage 12h")


# ---------------------------------------------------------------- logging out

def test_log_out_ends_the_session(driver, served):
    open_page(driver, served, "/nodes", "#who")
    driver.find_element(By.CSS_SELECTOR, "form[action='/logout'] button").click()
    wait(driver, EC.url_contains("/login"))
    assert driver.get_cookie("labq_token") is None
    driver.get(served.url + "/experiments")
    wait(driver, EC.url_contains("/login?next=%2Fexperiments"))
    try:
        driver.find_element(By.ID, "who")
        shown = True
    except Exception:
        shown = False
    assert not shown
    no_console_errors(driver, "logged out")


def test_no_page_runs_injected_markup(driver, served):
    """Text a job printed (here, the log's stderr) is shown as text, never parsed as HTML."""
    open_page(driver, served, f"/jobs/{served.job_ids[0]}", "#attempts tbody tr")
    try:
        wait(driver, EC.text_to_be_present_in_element((By.ID, "log-state"), "complete"), timeout=STREAM_WAIT)
    except TimeoutException:
        pytest.fail("the log did not finish")
    assert not driver.find_elements(By.CSS_SELECTOR, "#log b, #log script, #details b, #events b")
    no_console_errors(driver, "job again")


# ---------------------------------------------------------------- the pages over plain HTTP

def http(served, method: str, path: str, body: dict | None = None, headers: dict | None = None):
    """(status, headers, body) without following a redirect."""
    import http.client

    parts = urllib.parse.urlparse(served.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    data = urllib.parse.urlencode(body).encode() if body is not None else None
    sent = {"Content-Type": "application/x-www-form-urlencoded"} if data is not None else {}
    connection.request(method, path, body=data, headers={**sent, **(headers or {})})
    response = connection.getresponse()
    try:
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("path", ["/", "/experiments", "/experiments/x", "/jobs/1", "/nodes", "/usage?since=12h"])
def test_a_page_without_the_cookie_sends_the_browser_to_log_in(served, path):
    status, headers, _ = http(served, "GET", path)
    assert status == 303
    assert headers["location"] == "/login?next=" + urllib.parse.quote(path, safe="")


@pytest.mark.parametrize("target, lands", [("/nodes", "/nodes"), ("/experiments/a?b=1", "/experiments/a?b=1"),
                                           ("//evil.example/x", "/"), ("https://evil.example/", "/"),
                                           ("/\\evil.example", "/"), ("", "/")])
def test_logging_in_goes_back_only_to_a_page_of_this_site(served, target, lands):
    status, headers, _ = http(served, "POST", "/login", {"token": served.token, "next": target})
    assert status == 303 and headers["location"] == lands
    cookie = headers["set-cookie"]
    assert cookie.startswith("labq_token=") and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace(
        "SameSite=Strict", "SameSite=strict") and "Path=/" in cookie


def test_another_sites_form_cannot_log_a_visitor_in(served):
    status, headers, body = http(served, "POST", "/login", {"token": served.token, "next": "/"},
                                 {"Sec-Fetch-Site": "cross-site"})
    assert status == 403 and "set-cookie" not in headers
    status, _, body = http(served, "POST", "/login", {"token": "nope", "next": "/"})
    assert status == 401 and b"wrong token" in body


def test_the_pages_send_a_strict_policy_and_plotly_is_served_locally(served):
    from scheduler.server import pages

    cookie = {"Cookie": f"labq_token={served.token}"}
    _, headers, _ = http(served, "GET", "/nodes", headers=cookie)
    assert headers["content-security-policy"] == pages.CONTENT_SECURITY_POLICY
    assert "'unsafe-eval'" not in pages.CONTENT_SECURITY_POLICY
    _, headers, _ = http(served, "GET", f"/experiments/{served.experiment}", headers=cookie)
    assert headers["content-security-policy"] == pages.EXPERIMENT_PAGE_POLICY  # parcoords' WebGL needs eval
    status, headers, body = http(served, "GET", "/static/vendor/plotly.min.js")
    assert status == 200 and "javascript" in headers["content-type"] and b"plotly.js" in body[:500]
    status, headers, _ = http(served, "GET", "/static/common.js")
    assert status == 200 and "javascript" in headers["content-type"] and headers["cache-control"] == "no-cache"


def test_a_running_jobs_log_grows_live(driver, served):
    running = getattr(served, "hog_job_id", None)
    if not running:
        pytest.skip("the fixture holds no running job")
    status = api_get(served, f"/api/v1/status/{running}")
    if status["job"]["state"] != "running":
        pytest.skip(f"job {running} is {status['job']['state']}, not running")
    out = api_get(served, f"/api/v1/jobs/{running}/logs?stream=stdout")
    text = "".join(base64.b64decode(c["data"]).decode("utf-8", "replace") for c in out["chunks"])
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), None)
    open_page(driver, served, f"/jobs/{running}", "#attempts tbody tr")
    wait(driver, EC.text_to_be_present_in_element((By.ID, "log-state"), "following"))
    if first_line:
        wait(driver, EC.text_to_be_present_in_element((By.ID, "log"), first_line), timeout=STREAM_WAIT)
    assert "complete" not in text_of(driver, "#log-state")
    shoot(driver, served, "job-running")
    no_console_errors(driver, "running job")
    driver.get("about:blank")  # the page's stream ends with it
