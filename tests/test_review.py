"""scanstream.review.server: the review server over HTTP, and the page in a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from io import BytesIO

import numpy as np
import pytest
from fixtures import make_store
from PIL import Image
from test_query import candidates_from_store

from scanstream.candidates.query import CandidateFilter
from scanstream.errors import InputError
from scanstream.review.server import ReviewSession, default_verdicts_path, make_server
from scanstream.verdicts import read_records, read_verdicts

N_CARDS = 6


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    store = make_store(root / "sheet.zarr", n=24, seed=5)
    return store, candidates_from_store(store, root / "cands", seed=6)


@pytest.fixture
def served(table, tmp_path):
    store, cands = table
    session = ReviewSession(cands, tmp_path / "verdicts", stores=[store.path], filters=CandidateFilter(top=N_CARDS))
    server = make_server(session, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield store, session, url
    server.shutdown()
    server.server_close()


def http(url, *, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post_verdict(url, session, body, token=None):
    return http(
        url + "/api/verdict",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-Scanstream-Token": session.token if token is None else token},
    )


def test_page_lists_candidates_highest_first(served):
    _store, session, url = served
    status, body = http(url + "/")
    assert status == 200
    text = body.decode()
    ids = re.findall(r'data-object-id="([^"]*)"', text)
    assert ids == [r["object_id"] for r in session.rows] and len(ids) == N_CARDS
    scores = [r["score"] for r in session.rows]
    assert scores == sorted(scores, reverse=True)
    assert text.count('data-verdict="alpha"') == N_CARDS


def test_crop_route_serves_store_crop(served):
    store, session, url = served
    status, body = http(url + "/crop/2.png")
    assert status == 200
    i = store.object_ids.index(session.rows[2]["object_id"])
    assert np.array_equal(np.asarray(Image.open(BytesIO(body))), store.read(i, i + 1)[0])
    assert http(url + f"/crop/{N_CARDS}.png")[0] == 404
    assert http(url + "/crop/x.png")[0] == 404


def test_post_records_and_api_reports(served):
    _, session, url = served
    status, body = post_verdict(url, session, {"index": 1, "verdict": "not_alpha"})
    assert status == 200 and json.loads(body)["object_id"] == session.rows[1]["object_id"]
    post_verdict(url, session, {"index": 1, "verdict": "alpha"})  # changed mind: latest wins
    assert json.loads(http(url + "/api/verdicts")[1]) == {"verdicts": {"1": "alpha"}}
    assert len(read_records(session.verdicts_dir)) == 2
    [v] = read_verdicts(session.verdicts_dir)
    assert (v["object_id"], v["verdict"], v["label"]) == (session.rows[1]["object_id"], "alpha", 1)
    assert v["store_hash"] == session.lookup.stores[0].content_hash


@pytest.mark.parametrize(
    "body",
    [{"index": 0, "verdict": "maybe"}, {"index": N_CARDS, "verdict": "alpha"}, {"index": -1, "verdict": "alpha"},
     {"index": "0", "verdict": "alpha"}, {"verdict": "alpha"}, [0, "alpha"]],
)
def test_bad_verdict_posts_rejected(served, body):
    _, session, url = served
    assert post_verdict(url, session, body)[0] == 400
    assert read_records(session.verdicts_dir) == []


def test_post_needs_token(served):
    _, session, url = served
    assert post_verdict(url, session, {"index": 0, "verdict": "alpha"}, token="")[0] == 403
    assert post_verdict(url, session, {"index": 0, "verdict": "alpha"}, token="guess")[0] == 403
    assert read_records(session.verdicts_dir) == []


def test_foreign_host_header_rejected(served):
    _, _session, url = served
    assert http(url + "/", headers={"Host": "evil.example:80"})[0] == 403


def test_server_binds_localhost_only(served):
    _, _session, url = served
    assert url.startswith("http://127.0.0.1:")


def test_port_in_use(served):
    _, session, url = served
    with pytest.raises(InputError, match="cannot listen"):
        make_server(session, port=int(url.rsplit(":", 1)[1]))


def test_page_says_how_many_the_top_cut_leaves_out(served):
    _, session, url = served
    assert session.matching == 24 and session.shown == f"{N_CARDS} of 24"
    assert f"{N_CARDS} of 24 candidates" in http(url + "/")[1].decode()


def serve(session, **kw):
    server = make_server(session, port=0, **kw)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def test_allowed_host_lets_a_tunnel_or_proxy_in(table, tmp_path):
    store, cands = table
    session = ReviewSession(cands, tmp_path / "v", stores=[store.path], filters=CandidateFilter(top=2))
    server = serve(session, allowed_hosts=["localhost:9000", "proxy.lab"])
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert http(url + "/", headers={"Host": "localhost:9000"})[0] == 200
        assert http(url + "/", headers={"Host": "proxy.lab:443"})[0] == 200
        assert http(url + "/", headers={"Host": "localhost:9001"})[0] == 403
        assert http(url + "/", headers={"Host": "evil.example"})[0] == 403
    finally:
        server.shutdown()
        server.server_close()


def test_bound_beyond_loopback_every_request_needs_the_token(table, tmp_path):
    store, cands = table
    session = ReviewSession(cands, tmp_path / "v", stores=[store.path], filters=CandidateFilter(top=2))
    server = serve(session, host="0.0.0.0", allowed_hosts=["127.0.0.1"])
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert http(url + "/")[0] == 403 and http(url + "/crop/0.png")[0] == 403
        assert http(url + "/api/verdicts")[0] == 403
        req = urllib.request.Request(url + f"/?token={session.token}")
        with urllib.request.urlopen(req, timeout=10) as r:
            cookie = r.headers["Set-Cookie"]
        assert cookie.startswith(f"scanstream_token={session.token}") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert http(url + "/crop/0.png", headers={"Cookie": cookie.split(";")[0]})[0] == 200
        assert http(url + "/?token=guess")[0] == 403
    finally:
        server.shutdown()
        server.server_close()


def test_default_verdicts_path(tmp_path):
    assert default_verdicts_path(tmp_path / "cands") == tmp_path / "cands.verdicts"


# -- the real browser -----------------------------------------------------------------------


def chromium():
    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        pytest.skip("chromedriver is absent (install Debian's chromium and chromium-driver: `make browser`)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    profile = tempfile.mkdtemp(prefix="scanstream-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary:
        opts.binary_location = binary
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    return driver, profile


def wait_for(predicate, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_review_page_in_headless_chromium(served):
    from selenium.webdriver.common.by import By

    _store, session, url = served
    driver, profile = chromium()
    try:
        driver.get(url + "/")
        wait_for(lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        cards = driver.find_elements(By.CSS_SELECTOR, ".card")
        assert len(cards) == N_CARDS
        # every crop image actually loaded and decoded in the browser
        wait_for(lambda: all(driver.execute_script(
            "return Array.from(document.images).map(i => i.complete && i.naturalWidth === 224)")))
        assert [c.get_attribute("data-object-id") for c in cards] == [r["object_id"] for r in session.rows]
        assert "focus" in cards[0].get_attribute("class")

        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys("a")  # card 0: alpha, focus moves on to card 1
        wait_for(lambda: cards[0].get_attribute("data-verdict") == "alpha")
        body.send_keys("j")  # skip card 1
        body.send_keys("n")  # card 2: not alpha
        wait_for(lambda: cards[2].get_attribute("data-verdict") == "not_alpha")
        cards[3].find_element(By.CSS_SELECTOR, 'button[data-verdict="unsure"]').click()
        wait_for(lambda: cards[3].get_attribute("data-verdict") == "unsure")

        got = {r["object_id"]: r["verdict"] for r in read_verdicts(session.verdicts_dir)}
        assert got == {
            session.rows[0]["object_id"]: "alpha",
            session.rows[2]["object_id"]: "not_alpha",
            session.rows[3]["object_id"]: "unsure",
        }
        assert "recorded: alpha" in cards[0].text
        assert "3 of 6 reviewed" in driver.find_element(By.ID, "status").text

        # a reload shows the verdicts already recorded
        driver.refresh()
        wait_for(lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        cards = driver.find_elements(By.CSS_SELECTOR, ".card")
        assert [c.get_attribute("data-verdict") for c in cards] == ["alpha", None, "not_alpha", "unsure", None, None]
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
