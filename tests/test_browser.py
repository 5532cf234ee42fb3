"""The Workshop in a real Chromium (Debian's), driven by Playwright against a live gunicorn."""
import io
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import LiveServer, free_port
from providers import ProviderServer, Reply, Sleep
from wire import openai_frames

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the browser tests skip, saying why
    expect = sync_playwright = None

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TICKER_TEXT = re.compile(r"^(Timmy is thinking… · )?~([\d,]+) tokens · ~([\d,]+) sats?$")
FINAL_TEXT = re.compile(r"^Estimated: ([\d,]+) sats · Actual: ([\d,]+\.\d) sats")
WAIT = 30_000  # ms: generous, never a timing assertion

# Runs in every document before its scripts: records each distinct ticker frame and answer text
# the page shows, and whether an <img> or <script> ever appeared inside a job.
RECORDER = """
window.__tickers = []; window.__answers = []; window.__foreign = false;
new MutationObserver(() => {
  const t = document.querySelector('.ticker'), a = document.querySelector('.answer');
  const last = window.__tickers[window.__tickers.length - 1];
  if (t && (!last || last.text !== t.textContent || last.tokens !== +t.dataset.tokens))
    window.__tickers.push({text: t.textContent, tokens: +t.dataset.tokens,
                           output: +t.dataset.outputTokens, msat: +t.dataset.msat});
  if (a && a.textContent !== window.__answers[window.__answers.length - 1])
    window.__answers.push(a.textContent);
  if (document.querySelector('.job img, .job script')) window.__foreign = true;
}).observe(document, {childList: true, subtree: true, characterData: true, attributes: true});
"""


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    if sync_playwright is None:
        pytest.skip("the playwright package is missing (pip install -e '.[test]')")
    expect.set_options(timeout=WAIT)
    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=executable, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"])
    yield browser
    browser.close()
    playwright.stop()


def serve(tmp_path_factory, redis_url, tokens_per_second):
    return LiveServer(tmp_path_factory.mktemp("live"), redis_url,
                      DEMO_TOKENS_PER_SECOND=str(tokens_per_second)).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory, redis_url):
    server = serve(tmp_path_factory, redis_url, 60)
    yield server
    server.stop()


@contextmanager
def visitor(browser, server, **options):
    """A page for a fresh visitor (a cookie session of their own), with the recorder installed."""
    context = browser.new_context(**{"base_url": server.url, "viewport": {"width": 1280, "height": 900},
                                     **options})
    try:
        context.set_default_timeout(WAIT)
        context.add_init_script(RECORDER)
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def page(browser, server):
    with visitor(browser, server) as page:
        yield page


def submit_job(page, text):
    page.goto("/")
    page.fill("#job-request", text)
    page.get_by_role("button", name="Ask Timmy · 10 sats to evaluate").click()
    job = page.locator("section.job[sse-connect]")
    expect(job).to_be_visible()
    return job.get_attribute("id").removeprefix("job-")


def pay(page, next_state):
    page.locator(".invoice").get_by_role("button", name="Pay with development wallet").click()
    expect(page.locator(".job-card")).to_have_attribute("data-state", next_state)


def pay_both(page):
    card = page.locator(".job-card")
    expect(card).to_have_attribute("data-state", "awaiting_eval_payment")
    expect(page.locator(".invoice textarea.bolt11")).to_have_value(re.compile(r"^lnbcrt\w+$"))
    expect(page.locator('.invoice-actions a[href^="lightning:lnbcrt"]')).to_be_visible()
    pay(page, "awaiting_work_payment")
    expect(page.locator("dl.breakdown")).to_be_visible()
    expect(page.locator(".invoice")).to_have_count(1)
    page.evaluate("window.__tickers = []; window.__answers = []")
    pay(page, "executing")
    expect(page.locator(".indicator")).to_have_text("Timmy is working")


def api_job(page, job_id):
    response = page.request.get(f"/api/jobs/{job_id}")
    assert response.ok, response.text()
    return response.json()


def wait_for_tickers(page, count):
    """Wait for count recorded ticker frames (polled: the page's CSP forbids eval)."""
    for _ in range(WAIT // 100):
        if page.evaluate("window.__tickers.length") >= count:
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"fewer than {count} ticker frames: {recorded(page)[0]}")


def recorded(page):
    return page.evaluate("[window.__tickers, window.__answers]")


def assert_frames_sound(tickers, answers, result):
    """Every ticker frame is well formed and never goes back; every answer shown is a prefix."""
    for frame in tickers:
        match = TICKER_TEXT.match(frame["text"])
        assert match and match.group(2) == f"{frame['tokens']:,}", frame
        assert match.group(3) == "1" or frame["text"].endswith(" sats"), frame
        assert 0 <= frame["output"] < frame["tokens"] and frame["msat"] > 0, frame
    tokens = [frame["tokens"] for frame in tickers]
    assert tokens == sorted(tokens), f"data-tokens went down: {tokens}"
    for shown in answers:
        assert result.startswith(shown), f"text shown is not the answer's: {shown[-200:]!r}"


def finish(page, job_id):
    """Wait for the final panel; check it against the API and the page's answer. Return the job."""
    final = page.locator(".final:not([hidden])")
    expect(final).to_be_visible(timeout=90_000)
    expect(page.locator(".job-card")).to_have_attribute("data-state", "complete")
    expect(page.locator(".ticker")).to_have_count(0)
    job = api_job(page, job_id)
    ledger = job["costLedger"]
    assert job["state"] == "complete" and job["result"]
    figures = final.locator(".final-figures").text_content()
    match = FINAL_TEXT.match(figures)
    assert match, figures
    assert match.groups() == (f"{ledger['estimatedSats']:,}", ledger["actualSats"]), figures
    assert int(final.get_attribute("data-estimated-sat")) == ledger["estimatedSats"]
    assert int(final.get_attribute("data-actual-msat")) == ledger["actualMsat"]
    assert int(final.get_attribute("data-output-tokens")) == ledger["outputTokens"]
    assert page.locator(".answer").text_content() == job["result"]
    return job


def test_job_streams_with_a_live_ticker_then_settles(page):
    ARTIFACTS.mkdir(exist_ok=True)
    job_id = submit_job(page, "Plan a weekend soldering workshop for beginners, with a kit list.")
    pay_both(page)
    wait_for_tickers(page, 12)  # a few seconds in, for the screenshot
    expect(page.locator(".ticker")).to_have_text(TICKER_TEXT)
    page.screenshot(path=ARTIFACTS / "ticker.png")
    job = finish(page, job_id)
    page.screenshot(path=ARTIFACTS / "final.png")
    tickers, answers = recorded(page)
    changes = sum(a["text"] != b["text"] for a, b in zip(tickers, tickers[1:]))
    assert changes >= 3, tickers
    assert_frames_sound(tickers, answers, job["result"])
    assert tickers[-1]["output"] <= job["costLedger"]["outputTokens"]


def test_free_chat_has_no_ticker_and_a_friendly_limit(page):
    streams = []
    page.on("request", lambda r: r.resource_type == "eventsource" and streams.append(r.url))
    page.goto("/")
    log = page.locator("#chat-log")
    send = page.locator(".chat-form").get_by_role("button", name="Send")
    for n in range(1, 4):
        page.fill("#chat-input", f"Hello Timmy, message {n}")
        send.click()
        expect(log.locator(".chat-exchange")).to_have_count(n)
        reply = log.locator(".chat-timmy").last
        expect(reply).to_contain_text(f"You said “Hello Timmy, message {n}”")
        expect(page.locator("#chat-input")).to_have_value("")
    expect(page.locator(".chat .ticker")).to_have_count(0)
    assert streams == [], f"chat opened event streams: {streams}"
    page.fill("#chat-input", "One more, please")
    send.click()
    expect(log).to_contain_text("free allowance")
    expect(log.locator(".notice").last).to_be_in_viewport()  # the log scrolled to show it
    expect(log.locator(".chat-exchange")).to_have_count(3)
    expect(page.get_by_role("heading", name="Give Timmy a job.")).to_be_visible()
    assert streams == []


def test_reload_mid_stream_resumes_without_doubling(browser, tmp_path_factory, redis_url):
    slow = serve(tmp_path_factory, redis_url, 40)
    try:
        with visitor(browser, slow) as page:
            job_id = submit_job(page, "Write a careful guide to setting up a small electronics "
                                      "bench at home: tools, power, safety, lighting, storage, "
                                      "and a first project.")
            pay_both(page)
            wait_for_tickers(page, 3)
            before, answers_before = recorded(page)
            page.reload()
            expect(page).to_have_url(re.compile(f"/jobs/{job_id}$"))
            expect(page.locator(".ticker")).to_be_visible()
            first = recorded(page)[0][0]  # the ticker as the reloaded page was served
            assert first["tokens"] >= before[-1]["tokens"], (before[-1], first)
            job = finish(page, job_id)
            after, answers_after = recorded(page)
            assert_frames_sound(before, answers_before, job["result"])
            assert_frames_sound(after, answers_after, job["result"])
    finally:
        slow.stop()


def test_a_tab_past_the_cap_of_live_views_follows_the_job_and_says_why(browser, tmp_path_factory, redis_url):
    crowded = LiveServer(tmp_path_factory.mktemp("crowded"), redis_url, DEMO_TOKENS_PER_SECOND="60",
                         MAX_STREAMS_PER_VISITOR="1").start()
    try:
        with visitor(browser, crowded) as page:
            job_id = submit_job(page, "Explain how a soldering iron's tip temperature is regulated.")
            second = page.context.new_page()  # the same visitor's second tab: past the cap of one
            second.goto(f"/jobs/{job_id}")
            notice = second.locator(".live-status")
            expect(notice).to_be_visible()
            expect(notice).to_contain_text("Too many live views of your jobs are open")
            pay_both(page)
            # Not live, but not stuck either: the crowded tab is sent the job every few seconds,
            # through to its final panel, without a reload.
            expect(second.locator(".job-card")).to_have_attribute("data-state", "executing")
            expect(second.locator(".final:not([hidden])")).to_be_visible(timeout=90_000)
            job = finish(page, job_id)
            assert second.locator(".answer").text_content() == job["result"]
    finally:
        crowded.stop()


def test_job_works_without_javascript(browser, server):
    with visitor(browser, server, java_script_enabled=False) as page:
        page.goto("/")
        page.fill("#job-request", "A short checklist for a tidy workbench.")
        page.get_by_role("button", name="Ask Timmy · 10 sats to evaluate").click()
        expect(page).to_have_url(re.compile(r"/jobs/[\w-]+$"))
        job_id = page.url.rsplit("/", 1)[1]
        expect(page.locator('meta[http-equiv="refresh"]')).to_have_count(1)
        pay_button = page.get_by_role("button", name="Pay with development wallet")
        pay_button.click()  # a plain form post, answered with a 303 to the job page
        expect(page.locator(".job-card")).to_have_attribute("data-state", "awaiting_work_payment")
        expect(page.locator("dl.breakdown")).to_be_visible()
        pay_button.click()
        finish(page, job_id)  # reached by the noscript refresh alone
        expect(page.locator('meta[http-equiv="refresh"]')).to_have_count(0)


def test_markup_in_a_request_stays_text(page):
    markup = '<img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script>'
    job_id = submit_job(page, markup)
    expect(page.locator("blockquote.request")).to_have_text(markup)
    pay_both(page)
    job = finish(page, job_id)
    expect(page.locator(".answer")).to_contain_text(markup)
    assert markup in job["result"]
    assert page.evaluate("[typeof window.__pwned, window.__foreign]") == ["undefined", False]
    page.goto(f"/jobs/{job_id}")  # and as the server renders it
    expect(page.locator(".answer")).to_contain_text(markup)
    assert page.evaluate("[typeof window.__pwned, window.__foreign]") == ["undefined", False]


def test_job_on_a_model_provider_streams_a_live_ticker_then_settles(browser, tmp_path_factory, redis_url):
    """The main flow with Timmy on an OpenAI-compatible provider (a loopback one) instead of the demo."""
    pieces = [f" Step {i}: heat the joint, feed the solder, let it cool." for i in range(80)]
    verdict = '{"accepted": true, "reason": "Happy to help.", "estimated_output_tokens": 1200}'
    answer = openai_frames(pieces, prompt_tokens=60, completion_tokens=1000)
    provider = ProviderServer().start()
    provider.queue(Reply(openai_frames([verdict])),  # the evaluation, then the answer at a model's pace
                   Reply(answer[:1] + [step for frame in answer[1:] for step in (Sleep(0.05), frame)]))
    live = LiveServer(tmp_path_factory.mktemp("live"), redis_url, AGENT="openai",
                      PROVIDER_BASE_URL=f"{provider.url}/v1", PROVIDER_API_KEY="test-key",
                      WORK_MODEL="gpt-5.4-mini", EVAL_MODEL="gpt-5.4-nano", CHAT_MODEL="gpt-5.4-nano").start()
    try:
        with visitor(browser, live) as page:
            job_id = submit_job(page, "How do I solder a through-hole joint?")
            pay_both(page)
            job = finish(page, job_id)
            tickers, answers = recorded(page)
            changes = sum(a["text"] != b["text"] for a, b in zip(tickers, tickers[1:]))
            assert changes >= 3, tickers
            assert_frames_sound(tickers, answers, job["result"])
            assert job["result"] == "".join(pieces)
            ledger = job["costLedger"]
            assert ledger["usageSource"] == "provider" and ledger["outputTokens"] == 1000
            assert [r.body["model"] for r in provider.received] == ["gpt-5.4-nano", "gpt-5.4-mini"]
    finally:
        live.stop()
        provider.stop()


def test_a_refused_payment_says_why_next_to_the_job(browser, tmp_path_factory, redis_url):
    """The pay button swaps nothing on success, but a refusal (here a limit) reaches the visitor."""
    strict = LiveServer(tmp_path_factory.mktemp("live"), redis_url, PAY_RATE_LIMIT="1 per minute").start()
    try:
        with visitor(browser, strict) as page:
            submit_job(page, "A tidy workbench in five steps.")
            pay(page, "awaiting_work_payment")  # the minute's one payment
            expect(page.locator("#notices")).to_be_empty()
            page.locator(".invoice").get_by_role("button", name="Pay with development wallet").click()
            expect(page.locator("#notices")).to_contain_text("That's more than this allows (1 a minute)")
            expect(page.locator(".job-card")).to_have_attribute("data-state", "awaiting_work_payment")
    finally:
        strict.stop()


def read_qr(locator):
    """Return the texts of the QR codes in a screenshot of what the browser drew for locator."""
    zxingcpp = pytest.importorskip("zxingcpp", reason="zxing-cpp decodes the QR code (pip install -e '.[test]')")
    image = pytest.importorskip("PIL.Image", reason="pillow reads the screenshot (pip install -e '.[test]')")
    # QR codes only: a scan for every format once also read a stray 1D barcode ("B71C") in a QR
    # code's modules, beside the QR code itself.
    return [code.text for code in zxingcpp.read_barcodes(image.open(io.BytesIO(locator.screenshot())),
                                                         formats=zxingcpp.BarcodeFormat.QRCode)]


def countdown(page):
    """Return the countdown's seconds left, minutes and seconds as the page computes them now."""
    return page.evaluate("""() => { const style = getComputedStyle(document.querySelector('.invoice .countdown'));
        return ['--seconds-left', '--minutes-left', '--seconds-part'].map(p => +style.getPropertyValue(p)); }""")


def check_invoice(page, invoice_json):
    """The invoice shows its amount, text, link, a QR code of the link, and a running countdown."""
    invoice = page.locator(".invoice")
    expect(invoice).to_have_count(1)
    bolt11 = invoice_json["paymentRequest"]
    expect(invoice.locator("textarea.bolt11")).to_have_value(bolt11)
    expect(invoice.locator(".invoice-amount")).to_contain_text(f"{invoice_json['amountSats']:,} sats")
    link = invoice.locator("a.qr-link")
    assert link.get_attribute("href") == f"lightning:{bolt11}"
    expect(invoice.locator('.invoice-actions a[href^="lightning:"]')).to_have_attribute("href", f"lightning:{bolt11}")
    qr = link.locator("svg.qr")
    expect(qr).to_be_visible()
    # What the browser drew decodes to the link's URI (in upper case, the compact QR form; BOLT11
    # and URI schemes ignore case).
    assert read_qr(qr) == [f"lightning:{bolt11}".upper()]
    # The countdown runs in CSS alone: its figures go down and add up.
    first = countdown(page)
    assert 0 < first[0] <= 900 and first[1] * 60 + first[2] == first[0], first
    for _ in range(WAIT // 100):
        now = countdown(page)
        if now[0] < first[0]:
            break
        page.wait_for_timeout(100)
    assert now[0] < first[0] and now[1] * 60 + now[2] == now[0], (first, now)
    expect(invoice.locator(".invoice-expiry")).to_contain_text(re.compile(r"Expires \d\d:\d\d UTC"))
    return invoice


def test_invoices_show_a_qr_code_copy_and_countdown_and_payment_swaps_in(browser, server):
    with visitor(browser, server, permissions=["clipboard-read", "clipboard-write"]) as page:
        job_id = submit_job(page, "A checklist for reflowing a small circuit board.")
        page.evaluate("window.__same_document = true")
        job = api_job(page, job_id)
        invoice = check_invoice(page, job["evalInvoice"])
        copy = invoice.locator("button.copy-button")
        expect(copy).to_have_text("Copy invoice")
        copy.click()
        expect(copy).to_have_text("Copied")
        assert page.evaluate("navigator.clipboard.readText()") == job["evalInvoice"]["paymentRequest"]
        # Paid from elsewhere, as from a phone's wallet: the page learns of it over its event stream.
        assert page.request.post(f"/api/dev/pay/{job['evalInvoice']['paymentHash']}").ok
        expect(page.locator(".job-card")).to_have_attribute("data-state", "awaiting_work_payment")
        job = api_job(page, job_id)
        check_invoice(page, job["workInvoice"])
        pay(page, "executing")
        expect(page.locator(".invoice")).to_have_count(0)
        assert page.evaluate("window.__same_document") is True  # swapped in, never reloaded
        finish(page, job_id)


def test_without_javascript_the_invoice_still_has_its_qr_code_and_no_copy_button(browser, server):
    with visitor(browser, server, java_script_enabled=False) as page:
        page.goto("/")
        page.fill("#job-request", "A short checklist for a tidy workbench.")
        page.get_by_role("button", name="Ask Timmy · 10 sats to evaluate").click()
        expect(page).to_have_url(re.compile(r"/jobs/[\w-]+$"))
        bolt11 = page.locator(".invoice textarea.bolt11").input_value()
        assert read_qr(page.locator(".invoice svg.qr")) == [f"lightning:{bolt11}".upper()]
        expect(page.locator(".invoice .copy-button")).to_be_hidden()


def test_with_no_fresh_btc_price_the_form_says_so_and_no_job_starts(browser, tmp_path_factory, redis_url):
    # A source on a loopback port nobody listens on: every quote finds no fresh price.
    live = LiveServer(tmp_path_factory.mktemp("live"), redis_url,
                      BTC_USD_SOURCES=f"coinbase=http://127.0.0.1:{free_port()}/v2/prices/BTC-USD/spot").start()
    try:
        with visitor(browser, live) as page:
            page.goto("/")
            page.fill("#job-request", "A parts list for a bench power supply.")
            page.get_by_role("button", name="Ask Timmy · 10 sats to evaluate").click()
            expect(page.locator("#job-form-error")).to_contain_text(
                "Timmy can't quote right now: none of the Workshop's BTC price sources")
            expect(page.locator("#job-form-error")).to_contain_text("Nothing was charged")
            expect(page.locator(".invoice")).to_have_count(0)
            expect(page.locator("#job-request")).to_have_value("A parts list for a bench power supply.")
    finally:
        live.stop()


def test_a_claimed_refund_fits_a_phone_screen(browser, tmp_path_factory, redis_url):
    """At 360 px nothing overflows, the 64-character payment hash of a paid refund included."""
    cheap_btc = LiveServer(tmp_path_factory.mktemp("live"), redis_url, BTC_USD="1000",
                           DEMO_TOKENS_PER_SECOND="400").start()  # sats big enough for a refund
    try:
        with visitor(browser, cheap_btc, viewport={"width": 360, "height": 740}) as page:
            job_id = submit_job(page, "Three tips for a tidy workbench.")
            pay_both(page)
            ledger = finish(page, job_id)["costLedger"]
            assert ledger["refundOwedSats"] >= 1, ledger  # the demo's answer for this request undershoots
            page.get_by_role("button", name="Claim refund").click()
            expect(page.locator(".refund")).to_contain_text(f"Refunded: {ledger['refundOwedSats']:,}")
            expect(page.locator(".refund-owed")).to_have_count(0)  # "owed" gives way to "Refunded"
            assert page.evaluate("document.scrollingElement.scrollWidth") <= 360
            box = page.locator("code.payment-hash").bounding_box()
            assert box["x"] + box["width"] <= 360, box
    finally:
        cheap_btc.stop()
