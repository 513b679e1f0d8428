"""scanstream.review.server: the review server over HTTP, and the page in a real headless Chromium."""

from __future__ import annotations

import json
import os
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
from test_query import candidates_from_store, write_candidates

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


def items_of(url):
    status, body = http(url + "/api/items")
    assert status == 200
    return json.loads(body)


def test_items_list_candidates_highest_first_with_features(served):
    store, session, url = served
    data = items_of(url)
    cards = data["items"]
    in_score = sorted((c for c in cards if c["score_pos"] is not None), key=lambda c: c["score_pos"])
    assert [c["object_id"] for c in in_score] == [r["object_id"] for r in session.rows]  # the opening order's rows
    assert session.rows == session.cards[:N_CARDS] and len(cards) == len(session.cards) > N_CARDS
    scores = [c["score"] for c in in_score]
    assert len(in_score) == N_CARDS and scores == sorted(scores, reverse=True)
    assert data["order"] == "score" and data["planes"] == ["shallower", "vertex", "deeper"]
    for c in cards:
        i = store.object_ids.index(c["object_id"])
        row = store.table.slice(i, 1).to_pylist()[0]
        assert (c["multiplicity"], c["track_lengths_um"]) == (row["multiplicity"], row["track_lengths_um"])
        assert c["pixel_um"] == pytest.approx(store.attrs["pixel_size_um"]) and c["track_dips_deg"] is None
        assert (c["x_mm"], c["y_mm"], c["z_mm"]) == (row["x_mm"], row["y_mm"], row["z_mm"])


def test_both_orders_are_offered(served):
    _, session, url = served
    data = items_of(url)
    useful = sorted((c for c in data["items"] if c["useful_pos"] is not None), key=lambda c: c["useful_pos"])
    assert data["orders"]["useful"]["available"] and len(useful) == N_CARDS
    assert [c["band"] for c in useful] == [f["band"] for f in session.design_fields if f]
    assert len(session.cards) == len({(r["object_id"], r["store"]) for r in session.cards})  # each row once
    assert all(c["band"] is None for c in data["items"] if c["useful_pos"] is None)


def test_useful_order_not_offered_says_why(table, tmp_path):
    store, _ = table
    bare = candidates_from_store(store, tmp_path / "no-threshold", seed=6, threshold=None)
    session = ReviewSession(bare, tmp_path / "v", stores=[store.path], filters=CandidateFilter(top=4))
    assert not session.items()["orders"]["useful"]["available"] and session.useful_pos == [None] * len(session.cards)
    assert session.useful_note.startswith("most useful first is not offered") and "needs a threshold" in session.useful_note
    with pytest.raises(InputError, match="needs a threshold"):
        ReviewSession(bare, tmp_path / "v", stores=[store.path], filters=CandidateFilter(top=4), order="useful")


def test_useful_order_beside_a_narrowed_score_order_samples_whole_sheets(table, tmp_path):
    store, cands = table
    session = ReviewSession(cands, tmp_path / "v", stores=[store.path], filters=CandidateFilter(top=8, min_score=0.0))
    orders = session.items()["orders"]
    assert orders["useful"]["available"] and "narrow the score order only" in orders["useful"]["note"]
    assert all(r["score"] >= 0.0 for r in session.rows)
    useful = [c for c, p in zip(session.cards, session.useful_pos) if p is not None]
    assert len(useful) == 8 and min(r["score"] for r in useful) < 0.0  # the bulk below the cut is sampled too
    with pytest.raises(InputError, match="--min-score cannot be combined"):
        ReviewSession(cands, tmp_path / "v", stores=[store.path], filters=CandidateFilter(top=4, min_score=0.0),
                      order="useful")


def test_page_shell_counts_progress_from_the_start(served):
    _, session, url = served
    req = urllib.request.Request(url + "/")
    with urllib.request.urlopen(req, timeout=10) as r:
        text, csp = r.read().decode(), r.headers["Content-Security-Policy"]
    assert f"0 of {N_CARDS} reviewed" in text and f"{N_CARDS} of 24 candidates" in text
    assert '<script src="/static/review.js">' in text and "<script>" not in text
    assert "unsafe-inline" not in csp and "script-src 'self'" in csp
    post_verdict(url, session, {"index": 1, "verdict": "alpha"})
    assert f"1 of {N_CARDS} reviewed" in http(url + "/")[1].decode()


@pytest.mark.parametrize("path, ctype", [("/static/review.js", "text/javascript"), ("/static/review.css", "text/css")])
def test_static_files_served(served, path, ctype):
    _, _session, url = served
    with urllib.request.urlopen(url + path, timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith(ctype) and len(r.read()) > 1000


def test_crop_routes_serve_the_composite_and_each_plane(served):
    store, session, url = served
    i = store.object_ids.index(session.cards[2]["object_id"])
    crop = store.read(i, i + 1)[0]
    status, body = http(url + "/crop/2.png")
    assert status == 200 and np.array_equal(np.asarray(Image.open(BytesIO(body))), crop)
    for k in range(3):
        status, body = http(url + f"/crop/2/{k}.png")
        assert status == 200 and np.array_equal(np.asarray(Image.open(BytesIO(body))), crop[:, :, k])


@pytest.mark.parametrize("path, needle", [("/crop/99.png", "card number"), ("/crop/0/3.png", "plane must be 0..2"),
                                          ("/crop/99/0.png", "card number"), ("/crop/x.png", "not found"),
                                          ("/static/other.js", "not found"), ("/api/nothing", "not found")])
def test_bad_paths_get_a_404_with_one_line(served, path, needle):
    _, _session, url = served
    status, body = http(url + path)
    error = json.loads(body)["error"]
    assert status == 404 and needle in error and "\n" not in error


def test_post_records_and_api_reports(served):
    _, session, url = served
    status, body = post_verdict(url, session, {"index": 1, "verdict": "not_alpha"})
    assert status == 200 and json.loads(body)["object_id"] == session.cards[1]["object_id"]
    post_verdict(url, session, {"index": 1, "verdict": "alpha"})  # changed mind: latest wins
    assert json.loads(http(url + "/api/verdicts")[1]) == {"verdicts": {"1": "alpha"}}
    assert len(read_records(session.verdicts_dir)) == 2
    [v] = read_verdicts(session.verdicts_dir)
    assert (v["object_id"], v["verdict"], v["label"]) == (session.cards[1]["object_id"], "alpha", 1)
    assert v["store_hash"] == session.lookup.stores[0].content_hash and "design" not in v


def test_the_same_verdict_is_not_written_twice(served):
    _, session, url = served
    for _ in range(3):
        assert post_verdict(url, session, {"index": 0, "verdict": "alpha"})[0] == 200
    assert len(read_records(session.verdicts_dir)) == 1


def test_a_verdict_in_the_useful_order_records_its_design(served):
    _, session, url = served
    i = next(k for k, f in enumerate(session.design_fields) if f)
    assert post_verdict(url, session, {"index": i, "verdict": "alpha"})[0] == 200  # score order: no design
    assert post_verdict(url, session, {"index": i, "verdict": "alpha", "order": "useful"})[0] == 200
    recs = read_records(session.verdicts_dir)
    assert len(recs) == 2 and "design" not in recs[0]
    assert recs[1]["design"] == session.design_fields[i]["design"] and recs[1]["band"] == session.design_fields[i]["band"]


def test_undo_withdraws_the_last_verdict(served):
    _, session, url = served

    def undo():
        status, body = http(url + "/api/undo", data=b"{}", headers={"X-Scanstream-Token": session.token})
        return status, json.loads(body)

    status, answer = undo()
    assert status == 409 and "nothing to undo" in answer["error"]
    post_verdict(url, session, {"index": 0, "verdict": "not_alpha"})
    post_verdict(url, session, {"index": 0, "verdict": "alpha"})
    post_verdict(url, session, {"index": 2, "verdict": "unsure"})
    assert undo() == (200, {"ok": True, "index": 2, "verdict": None})
    assert undo() == (200, {"ok": True, "index": 0, "verdict": "not_alpha"})  # the earlier verdict is back
    assert json.loads(http(url + "/api/verdicts")[1]) == {"verdicts": {"0": "not_alpha"}}
    assert [r["verdict"] for r in read_verdicts(session.verdicts_dir)] == ["not_alpha"]
    assert http(url + "/api/undo", data=b"{}", headers={"X-Scanstream-Token": "guess"})[0] == 403


@pytest.mark.parametrize(
    "body",
    [{"index": 0, "verdict": "maybe"}, {"index": N_CARDS + 50, "verdict": "alpha"}, {"index": -1, "verdict": "alpha"},
     {"index": "0", "verdict": "alpha"}, {"verdict": "alpha"}, [0, "alpha"],
     {"index": 0, "verdict": "alpha", "order": "random"}],
)
def test_bad_verdict_posts_rejected(served, body):
    _, session, url = served
    status, answer = post_verdict(url, session, body)
    assert status == 400 and "\n" not in json.loads(answer)["error"]
    assert read_records(session.verdicts_dir) == []


def test_a_card_outside_the_order_is_refused(served):
    _, session, url = served
    i = next(k for k, p in enumerate(session.useful_pos) if p is None)
    status, answer = post_verdict(url, session, {"index": i, "verdict": "alpha", "order": "useful"})
    assert status == 400 and "is not in the useful order" in json.loads(answer)["error"]


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


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """Two simulated sheets (8 objects each, their planes and picker features), scored like a model would."""
    from scanstream.simulate.dataset import simulate_store

    root = tmp_path_factory.mktemp("review-sim")
    rng = np.random.default_rng(3)
    rows = []
    for k, sheet in enumerate(("A", "B")):
        store = simulate_store(root / f"{sheet}.zarr", objects=8, alpha_fraction=0.5, sheet=sheet, seed=11 + k)
        t = store.table
        for i, (oid, label, x, y, z) in enumerate(zip(*(t.column(c).to_pylist()
                                                        for c in ("object_id", "label", "x_mm", "y_mm", "z_mm")))):
            rows.append({"object_id": oid, "sheet": sheet, "plate": 9, "x_mm": x, "y_mm": y, "z_mm": z,
                         "score": float(rng.normal(1.5 if label == 1 else -1.5, 1.0)), "store": str(store.path),
                         "store_index": i})
    return write_candidates(root / "cands", rows, threshold=0.5), rows


def body_of(driver):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body")


def press(driver, keys):
    driver.execute_script("document.activeElement.blur()")  # keys go to the page, not a filter box
    body_of(driver).send_keys(keys)


def view_ids(driver):
    return driver.execute_script("return Array.from(document.querySelectorAll('#grid .card:not(.hidden)'))"
                                 ".map(c => c.dataset.objectId)")


def focused(driver):
    return driver.execute_script("const c = document.querySelector('.card.focus'); return c && c.dataset.objectId")


def card_verdict(driver, oid):
    return driver.execute_script("return document.querySelector(`.card[data-object-id='${arguments[0]}']`)"
                                 ".dataset.verdict || null", oid)


def test_review_page_in_headless_chromium(simulated, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    cands, rows = simulated
    session = ReviewSession(cands, tmp_path / "verdicts", filters=CandidateFilter(top=16))
    server = serve(session)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    by_score = [r["object_id"] for r in sorted(rows, key=lambda r: (-np.float32(r["score"]), r["object_id"]))]
    driver, profile = chromium()
    try:
        driver.set_window_size(1480, 1000)
        driver.get(url + "/")
        assert driver.find_element(By.ID, "progress").text == "0 of 16 reviewed"  # from the start
        wait_for(lambda: body_of(driver).get_attribute("data-ready") == "1")
        assert view_ids(driver) == by_score and focused(driver) == by_score[0]
        # every composite and plane image loaded and decoded in the browser
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # the lower cards load lazily
        wait_for(lambda: all(driver.execute_script(
            "return Array.from(document.querySelectorAll('.card img')).map(i => i.complete && i.naturalWidth === 224)")))
        driver.execute_script("window.scrollTo(0, 0)")
        assert len(driver.find_elements(By.CSS_SELECTOR, ".card img")) == 16 * 4

        # keyboard verdicts, then undo
        press(driver, "a")
        wait_for(lambda: card_verdict(driver, by_score[0]) == "alpha")
        assert focused(driver) == by_score[1]  # on to the next unreviewed at once
        press(driver, "o")
        wait_for(lambda: card_verdict(driver, by_score[1]) == "not_alpha")
        wait_for(lambda: driver.find_element(By.ID, "progress").text == "2 of 16 reviewed")
        press(driver, "u")
        wait_for(lambda: card_verdict(driver, by_score[1]) is None)
        assert focused(driver) == by_score[1] and driver.find_element(By.ID, "progress").text == "1 of 16 reviewed"
        assert {r["object_id"]: r["verdict"] for r in read_verdicts(session.verdicts_dir)} == {by_score[0]: "alpha"}
        # next unreviewed skips what has a verdict
        press(driver, "k")
        assert focused(driver) == by_score[0]
        press(driver, "n")
        assert focused(driver) == by_score[1]

        # a plane alone, zoomed, with its scale bar
        press(driver, "2")
        big = driver.find_element(By.ID, "big")
        i = next(k for k, r in enumerate(session.cards) if r["object_id"] == by_score[1])
        wait_for(lambda: big.get_attribute("src").endswith(f"/crop/{i}/1.png") and big.get_attribute("data-view") == "1")
        wait_for(lambda: driver.execute_script("return document.getElementById('big').naturalWidth") == 224)
        press(driver, "z")  # 2x -> 3x
        assert big.size["width"] == 3 * 224
        bar = driver.find_element(By.ID, "scalebar")
        um, px = float(bar.get_attribute("data-um")), float(bar.get_attribute("data-px"))
        pixel_um = session.pixel_um(0)
        assert px == pytest.approx(um * 3 / pixel_um, abs=0.01) and f"{um:g} um" in bar.text
        assert bar.find_element(By.CLASS_NAME, "bar").size["width"] == round(px)
        press(driver, "z")  # 4x, centred on the vertex
        frame = driver.find_element(By.ID, "frame")
        assert big.size["width"] == 4 * 224 and frame.get_property("scrollLeft") == frame.get_property("scrollTop") == 224
        press(driver, "-")
        press(driver, "-")  # back to 2x
        assert big.size["width"] == 2 * 224
        assert "multiplicity" in driver.find_element(By.ID, "detail").text and "dips" in driver.find_element(By.ID, "detail").text
        press(driver, "c")
        wait_for(lambda: big.get_attribute("data-view") == "composite" and big.get_attribute("src").endswith(f"/crop/{i}.png"))

        # filters: one sheet, then a score range
        Select(driver.find_element(By.ID, "sheet")).select_by_value("B")
        assert view_ids(driver) == [o for o in by_score if o.startswith("SIM-B-")]
        lo = sorted(r["score"] for r in rows if r["sheet"] == "B")[4]
        box = driver.find_element(By.ID, "min-score")
        box.send_keys(f"{lo - 1e-4:.4f}")
        assert view_ids(driver) == [r["object_id"] for r in sorted(rows, key=lambda r: -r["score"])
                                    if r["sheet"] == "B" and r["score"] >= lo - 1e-4]
        shown = view_ids(driver)
        done = int(by_score[0] in shown)  # the one alpha verdict so far
        assert driver.find_element(By.ID, "progress").text == f"{done} of {len(shown)} reviewed (1 of 16 in this order)"
        box.clear()
        Select(driver.find_element(By.ID, "sheet")).select_by_value("")
        assert view_ids(driver) == by_score

        # the most useful first, beside the score order; its verdicts record the design
        Select(driver.find_element(By.ID, "order")).select_by_value("useful")
        useful = [session.cards[i]["object_id"] for i in np.argsort([p if p is not None else 99 for p in session.useful_pos])
                  if session.useful_pos[i] is not None]
        assert view_ids(driver) == useful and "score band" in driver.find_element(By.ID, "grid").text
        first = focused(driver)
        press(driver, "a")
        wait_for(lambda: card_verdict(driver, first) == "alpha")
        assert any(r["object_id"] == first and r.get("design") for r in read_records(session.verdicts_dir))

        # a reload shows the verdicts recorded; then the screenshot for docs/review.png
        Select(driver.find_element(By.ID, "order")).select_by_value("score")
        for key in "aoaa":
            press(driver, key)
        driver.refresh()
        wait_for(lambda: body_of(driver).get_attribute("data-ready") == "1")
        recorded = {r["object_id"]: r["verdict"] for r in read_verdicts(session.verdicts_dir)}
        assert {o: card_verdict(driver, o) for o in by_score if card_verdict(driver, o)} == recorded
        press(driver, "n")
        press(driver, "2")
        driver.set_window_size(1480, 1200)
        driver.execute_script("window.scrollTo(0, 0)")  # the header: progress, filters, orders
        wait_for(lambda: all(driver.execute_script(
            "return Array.from(document.images).filter(i => i.getBoundingClientRect().top < innerHeight)"
            ".map(i => i.complete && i.naturalWidth === 224)")))
        shot = tmp_path / "review.png"
        assert driver.save_screenshot(str(shot))
        assert Image.open(shot).size[0] >= 1400
        if os.environ.get("SCANSTREAM_REVIEW_SCREENSHOT"):  # docs/review.png is made this way (docs/morning.md)
            Image.open(shot).convert("RGB").save(os.environ["SCANSTREAM_REVIEW_SCREENSHOT"], optimize=True)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        server.shutdown()
        server.server_close()
