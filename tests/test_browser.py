"""The app in a real browser: Playwright driving Debian's headless Chromium (/usr/bin/chromium).

Attach an image, ask, watch the answer arrive; ask again (history), retry, undo; switch to the
text-to-image tab, generate two images, see them in the gallery. Screenshots go to
tests/artifacts/; with JANUS_UPDATE_SCREENSHOTS=1 one of each tab is also copied to
assets/screenshots/ for the README.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_app import ASSETS, shared_cache, start_app, stop_app

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]  # a test-pattern webcam
DESKTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
SCREENSHOTS = Path(__file__).resolve().parents[1] / "assets" / "screenshots"
TIMEOUT_MS = int(os.environ.get("JANUS_BROWSER_TIMEOUT_MS", 300_000))  # generous: the machine may be busy

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium package is not installed")


@pytest.fixture(scope="module")
def server(tmp_path_factory, artifacts_dir):
    proc, url = start_app(shared_cache(tmp_path_factory), artifacts_dir / "test_browser.server.log")
    yield url
    stop_app(proc)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        playwright_api.expect.set_options(timeout=TIMEOUT_MS)
        yield browser
        browser.close()


def open_page(browser, url, viewport=DESKTOP):
    """A new browser context (its own cookies and storage): a new visitor, a new Gradio session."""
    page = browser.new_context(viewport=viewport, permissions=["camera"]).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#chat-input textarea")
    return page


@pytest.fixture(scope="module")
def page(browser, server):
    return open_page(browser, server)


def keep(page, artifacts_dir: Path, name: str):
    path = artifacts_dir / f"browser-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("JANUS_UPDATE_SCREENSHOTS") == "1":  # README copies, as compact JPEGs
        from PIL import Image

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("RGB").save(SCREENSHOTS / f"{name}.jpg", quality=85, optimize=True)


# Counts finished chat runs: the text box is disabled while the model answers and enabled
# again at the end. A MutationObserver sees every switch, however fast the tiny model is.
WATCH_CHAT_RUNS = """() => {
  const root = document.querySelector('#chat-input');
  window.__chatRuns = 0; window.__chatLocked = false;
  if (window.__chatObserver) window.__chatObserver.disconnect();
  window.__chatObserver = new MutationObserver(() => {
    const box = root.querySelector('textarea');
    if (box.disabled) window.__chatLocked = true;
    else if (window.__chatLocked) { window.__chatLocked = false; window.__chatRuns += 1; }
  });
  window.__chatObserver.observe(root, {attributes: true, childList: true, subtree: true});
}"""


def chat_run(page, action):
    """Do `action` (which starts a chat answer) and return when the answer is complete."""
    page.evaluate(WATCH_CHAT_RUNS)
    action()
    page.wait_for_function("() => window.__chatRuns >= 1", timeout=TIMEOUT_MS)


def ask(page, text: str, images=()):
    if images:
        page.set_input_files("#chat-input input[data-testid=file-upload]", [str(p) for p in images])
        # The thumbnails show once the upload finished; only then may the message be sent.
        playwright_api.expect(page.locator("#chat-input img")).to_have_count(len(images))
    page.fill("#chat-input textarea", text)
    chat_run(page, lambda: page.click("#chat-input [data-testid=submit-button]"))


def test_chat_with_an_image(page, artifacts_dir):
    bots, users = page.locator("#chatbot [data-testid=bot]"), page.locator("#chatbot [data-testid=user]")
    expect = playwright_api.expect
    set_max_new_tokens(page, 40)  # keep answers short

    ask(page, "What shapes are in this picture?", [ASSETS / "shapes.png"])
    expect(users.filter(has_text="What shapes are in this picture?")).to_have_count(1)
    expect(page.locator("#chatbot img[src*='shapes']")).to_have_count(1)  # the image is part of the turn
    expect(bots).to_have_count(1)
    assert bots.nth(0).inner_text().strip(), "the answer should appear in the chat"
    expect(page.locator("#footer")).to_contain_text("tokens/s")
    keep(page, artifacts_dir, "chat")

    # A second turn, with history (the image stays in the conversation).
    ask(page, "And what colour is the circle?")
    expect(bots).to_have_count(2)
    expect(users.filter(has_text="And what colour is the circle?")).to_have_count(1)

    # Retry regenerates the last answer in place (greedy: the same text); undo takes the turn back.
    second = bots.nth(1).inner_text()
    chat_run(page, lambda: page.locator("#chatbot button[aria-label=Retry]").last.click())
    expect(bots).to_have_count(2)
    assert bots.nth(1).inner_text() == second
    page.locator("#chatbot button[aria-label=Undo]").last.click()
    expect(bots).to_have_count(1)
    expect(page.locator("#chat-input textarea")).to_have_value("And what colour is the circle?")


def test_generate_two_images(page, artifacts_dir):
    expect = playwright_api.expect
    page.get_by_role("tab", name="Text to image").click()
    page.fill("#t2i-prompt textarea", "A red fox sitting in a field of sunflowers, watercolor painting")
    page.click("#t2i-generate")
    thumbnails = page.locator("#t2i-gallery .thumbnail-item img")
    expect(thumbnails).to_have_count(2)  # the default number of images
    expect(page.locator("#t2i-preview img")).to_have_count(1)  # a preview was shown on the way
    expect(page.locator("#footer")).to_contain_text("s/image")
    for i in range(2):  # the images really loaded
        assert thumbnails.nth(i).evaluate("img => img.complete && img.naturalWidth") == 384
    keep(page, artifacts_dir, "text-to-image")


def set_max_new_tokens(page, n: int):
    page.bring_to_front()  # a page in the background has its rendering paused: the slider would not follow
    number = page.locator("#chat-max-new-tokens input[type=number]")
    slider = page.locator("#chat-max-new-tokens input[type=range]")
    if not number.is_visible():
        page.get_by_text("Parameters").first.click()  # open the accordion
    # A value typed while the freshly opened accordion is still binding its handlers is dropped
    # (seen once in CI on a busy machine): type it again until the slider shows it.
    for _ in range(5):
        number.fill(str(n))
        number.press("Enter")
        number.blur()  # the slider takes the typed value when the field is left
        try:
            page.wait_for_function("([el, n]) => el.value === n", arg=[slider.element_handle(), str(n)], timeout=5_000)
            return
        except playwright_api.TimeoutError:
            continue
    playwright_api.expect(slider).to_have_value(str(n))


def test_each_visitor_sees_only_their_own_figures(browser, server, artifacts_dir):
    """Two sessions chat at the same time: each footer shows its own run's figures, and a newcomer
    sees none (the footer once showed whoever ran last)."""
    import re

    expect = playwright_api.expect
    a, b = open_page(browser, server), open_page(browser, server)
    for visitor, n in ((a, 24), (b, 3)):
        set_max_new_tokens(visitor, n)
        visitor.evaluate(WATCH_CHAT_RUNS)
        visitor.fill("#chat-input textarea", "Tell me a story about a lighthouse.")
    for visitor in (a, b):  # both answers are under way together
        visitor.bring_to_front()
        visitor.click("#chat-input [data-testid=submit-button]")
    for visitor in (a, b):
        visitor.wait_for_function("() => window.__chatRuns >= 1", timeout=TIMEOUT_MS)
    for visitor, n in ((a, 24), (b, 3)):
        visitor.bring_to_front()
        expect(visitor.locator("#footer")).to_contain_text("your last chat")
        tokens = int(re.search(r"your last chat: (\d+) tokens", visitor.locator("#footer").inner_text()).group(1))
        answer = visitor.locator("#chatbot [data-testid=bot]").last.inner_text()
        assert 1 <= tokens <= n and answer.strip(), (n, tokens, answer)
    newcomer = open_page(browser, server)
    expect(newcomer.locator("#footer")).to_contain_text("weights")
    assert "last chat" not in newcomer.locator("#footer").inner_text()  # nobody else's run
    keep(newcomer, artifacts_dir, "newcomer-footer")
    for visitor in (a, b, newcomer):
        visitor.context.close()


# True once every toast is fully shown and still: Gradio fades a toast in (a Web Animation) and
# springs it into place, so a screenshot taken as soon as its text is visible catches it faint.
# Of a toast's animations only its countdown bar (class "timer") runs on while it is shown.
_TOASTS_SETTLED = """() => {
    const toasts = [...document.querySelectorAll('[data-testid=toast-body]')];
    // Only the toasts' own animations: a spinner elsewhere (a run in progress) keeps animating.
    const moving = document.getAnimations().some(a => {
        const el = a.effect && a.effect.target;
        return el && !el.classList.contains('timer') && toasts.some(t => t.contains(el) || el.contains(t));
    });
    const key = toasts.map(t => { const r = t.getBoundingClientRect(); return `${r.x},${r.y}`; }).join(';');
    const still = window.__toastPlaces === key;
    window.__toastPlaces = key;
    // No toast at all: the message is the page's own (the login form's), nothing to wait for.
    return still && !moving && toasts.every(t => getComputedStyle(t).opacity === '1');
}"""


def toast(page, words: str):
    """The readable message Gradio shows for a gr.Error / gr.Info (or the login page's), once fully shown."""
    playwright_api.expect(page.get_by_text(words, exact=False).first).to_be_visible()
    page.wait_for_function(_TOASTS_SETTLED)


def test_a_refused_upload_says_why_and_keeps_the_conversation(browser, server, tmp_path, artifacts_dir):
    expect = playwright_api.expect
    page = open_page(browser, server)
    set_max_new_tokens(page, 8)
    ask(page, "Hello there")
    bots, users = page.locator("#chatbot [data-testid=bot]"), page.locator("#chatbot [data-testid=user]")
    expect(bots).to_have_count(1)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not the rest of a PNG" * 20)
    page.set_input_files("#chat-input input[data-testid=file-upload]", [str(broken), str(ASSETS / "shapes.png")])
    thumbnails = page.locator("#chat-input img")
    expect(thumbnails).to_have_count(2)
    page.fill("#chat-input textarea", "What is this?")
    page.click("#chat-input [data-testid=submit-button]")
    toast(page, "broken.png is not a readable image")
    keep(page, artifacts_dir, "chat-refused-upload")
    expect(users).to_have_count(1)  # the conversation is as it was
    expect(bots).to_have_count(1)
    assert "/tmp" not in page.locator("body").inner_text()  # no server path in the message
    # The message waits to be sent again: its text and the good image, without the refused one.
    expect(thumbnails).to_have_count(1)
    expect(page.locator("#chat-input textarea")).to_have_value("What is this?")
    expect(page.locator("#chat-input textarea")).to_be_enabled()
    chat_run(page, lambda: page.click("#chat-input [data-testid=submit-button]"))
    expect(bots).to_have_count(2)
    expect(page.locator("#chatbot img[src*='shapes']")).to_have_count(1)
    page.context.close()


def test_an_error_during_an_answer_leaves_the_chat_usable(browser, server, artifacts_dir):
    expect = playwright_api.expect
    page = open_page(browser, server)
    set_max_new_tokens(page, 8)  # opens the parameters
    top = page.locator("#chat-max-new-tokens input[type=range]").get_attribute("max")
    assert top == "1024"  # the slider's top leaves room for a prompt in the tiny model's 2048-token window
    set_max_new_tokens(page, 1024)
    ask(page, "word " * 300)  # ~1300 prompt tokens: with 1024 new ones over the tiny model's 2048-token window, with 8 not
    toast(page, "context window")
    bots = page.locator("#chatbot [data-testid=bot]")
    expect(bots).to_have_count(1)  # the conversation says it too, where Retry and Undo are
    expect(bots.last).to_contain_text("Could not answer")
    keep(page, artifacts_dir, "chat-error-during-answer")
    expect(page.locator("#chat-input textarea")).to_be_enabled()  # not stuck disabled
    set_max_new_tokens(page, 8)
    chat_run(page, lambda: page.locator("#chatbot button[aria-label=Retry]").last.click())
    expect(bots).to_have_count(1)  # Retry answered the same question, in place of the failure
    expect(bots.last).not_to_contain_text("Could not answer")
    ask(page, "And now?")
    expect(bots).to_have_count(2)
    page.context.close()


def test_retry_samples_anew_when_sampling(browser, server):
    expect = playwright_api.expect
    page = open_page(browser, server)
    set_max_new_tokens(page, 24)
    page.fill("#chat-temperature input[type=number]", "1")
    page.press("#chat-temperature input[type=number]", "Enter")
    ask(page, "Tell me about lighthouses.")
    seed = page.locator("#chat-seed input").input_value()
    bots = page.locator("#chatbot [data-testid=bot]")
    first = bots.last.inner_text()
    chat_run(page, lambda: page.locator("#chatbot button[aria-label=Retry]").last.click())
    expect(bots).to_have_count(1)
    assert page.locator("#chat-seed input").input_value() != seed  # a new draw, shown
    assert bots.last.inner_text() != first
    page.context.close()


def test_image_runs_keep_results_one_at_a_time_and_stop_the_run_shown(browser, server, artifacts_dir):
    expect = playwright_api.expect
    page = open_page(browser, server)
    page.get_by_role("tab", name="Text to image").click()
    thumbnails, generate = page.locator("#t2i-gallery .thumbnail-item img"), page.locator("#t2i-generate")
    page.fill("#t2i-num-images input[type=number]", "1")
    page.press("#t2i-num-images input[type=number]", "Enter")
    page.fill("#t2i-prompt textarea", "A lighthouse on a cliff at dusk")
    page.press("#t2i-prompt textarea", "Enter")  # Enter generates
    expect(thumbnails).to_have_count(1)
    expect(generate).to_be_enabled()

    page.fill("#t2i-prompt textarea", "   ")
    generate.click()
    toast(page, "prompt is empty")
    expect(thumbnails).to_have_count(1)  # an error keeps the earlier results
    expect(generate).to_be_enabled()

    page.fill("#t2i-num-images input[type=number]", "3")  # the slowest run this server allows
    page.press("#t2i-num-images input[type=number]", "Enter")
    page.fill("#t2i-prompt textarea", "A red fox in the snow")
    generate.click()
    expect(generate).to_be_disabled()  # one run at a time
    page.press("#t2i-prompt textarea", "Enter")  # a second start from the keyboard is refused
    toast(page, "already going")
    expect(thumbnails).to_have_count(1)  # results stay until new ones replace them
    page.click("#t2i-stop")
    toast(page, "Generation stopped")
    expect(generate).to_be_enabled()
    expect(thumbnails).to_have_count(1)  # the stopped run left the earlier image
    keep(page, artifacts_dir, "t2i-stopped-keeps-results")
    page.fill("#t2i-num-images input[type=number]", "2")
    page.press("#t2i-num-images input[type=number]", "Enter")
    generate.click()
    expect(thumbnails).to_have_count(2)  # the server is free again and new results replace the old
    page.context.close()


def test_on_a_phone_the_title_stays_and_generate_shows_its_run(browser, server, artifacts_dir):
    """390x844: nothing scrolls the title away on load, and after Generate the forming preview and
    the progress are on screen (they once sat 1,200 px below the button)."""
    expect = playwright_api.expect
    page = open_page(browser, server, PHONE)
    page.wait_for_timeout(1_000)  # the moment an autofocus would have scrolled
    assert page.evaluate("window.scrollY") == 0
    expect(page.get_by_role("heading", name="Janus Studio")).to_be_in_viewport()
    page.get_by_role("tab", name="Text to image").click()
    page.fill("#t2i-prompt textarea", "A lighthouse on a cliff at dusk")
    page.click("#t2i-generate")
    expect(page.locator("#t2i-preview img")).to_have_count(1)
    expect(page.locator("#t2i-preview")).to_be_in_viewport()
    expect(page.locator("#t2i-gallery .thumbnail-item img")).to_have_count(2)
    expect(page.locator("#t2i-gallery")).to_be_in_viewport()
    keep(page, artifacts_dir, "phone-t2i-after-generate")
    page.context.close()


def test_chat_examples_webcam_help_and_the_inputs_own_stop_button(browser, server, artifacts_dir):
    expect = playwright_api.expect
    page = open_page(browser, server)
    box = page.locator("#chat-input textarea")
    # The examples are in the empty conversation, on screen without scrolling; one fills the input.
    example = page.locator("#chatbot button.example").first
    expect(example).to_be_in_viewport()
    example.click()
    expect(box).to_have_value("Describe this picture in detail.")
    expect(page.locator("#chat-input img")).to_have_count(1)
    box.fill("")
    page.locator("#chat-input button[aria-label='Remove file']").first.click()  # back to an empty input
    expect(page.locator("#chat-input img")).to_have_count(0)

    # A photo from the webcam (Chromium's test pattern) joins the message and reaches the model.
    page.get_by_text("Camera or clipboard").click()
    page.get_by_text("Click to Access Webcam").click()
    page.wait_for_function("() => document.querySelector('#chat-capture video')?.readyState >= 2")  # frames flow
    page.locator("#chat-capture button[aria-label='capture photo']").click()
    expect(page.locator("#chat-input img")).to_have_count(1)
    set_max_new_tokens(page, 4)
    ask(page, "What is in this photo?")
    expect(page.locator("#chatbot [data-testid=user] img")).to_have_count(1)
    expect(page.locator("#chatbot [data-testid=bot]")).to_have_count(1)
    keep(page, artifacts_dir, "chat-webcam-photo")

    # The parameters explain themselves.
    expect(page.get_by_text("0 = greedy", exact=False)).to_be_visible()
    expect(page.get_by_text("probabilities add up to", exact=False)).to_be_visible()

    # While an answer is written the send button becomes a stop button, and it stops the answer.
    longest = int(page.locator("#chat-max-new-tokens input[type=range]").get_attribute("max"))
    set_max_new_tokens(page, longest)
    page.evaluate(WATCH_CHAT_RUNS)
    box.fill("Tell me a very long story.")
    page.click("#chat-input [data-testid=submit-button]")
    page.locator("#chat-input button[aria-label=Stop]").click()
    page.wait_for_function("() => window.__chatRuns >= 1", timeout=TIMEOUT_MS)
    expect(box).to_be_enabled()
    expect(page.locator("#chat-input [data-testid=submit-button]")).to_be_visible()
    import re

    footer = page.locator("#footer").inner_text()
    tokens = int(re.search(r"your last chat: (\d+) tokens", footer).group(1))
    assert tokens < longest, footer  # stopped before the end
    keep(page, artifacts_dir, "chat-stopped-from-the-input")
    page.context.close()


def test_chat_text_shows_html_as_typed_and_loads_nothing_from_elsewhere(browser, server, artifacts_dir):
    """Markup in a question (or an answer: both go through app.shown) is shown as typed, never
    rendered; a markdown image naming another host is not fetched (the page's image policy)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    elsewhere = f"http://127.0.0.1:{http.server_address[1]}"
    text = (f'<img src="{elsewhere}/tag.png" onerror="window.__pwned=1"><script>window.__pwned=2</script>'
            f'<b id="injected">bold</b> <a id="jslink" href="javascript:window.__pwned=3">link</a> '
            f'![pixel]({elsewhere}/pixel.png) `<i>code</i>` & done')
    expect = playwright_api.expect
    page = open_page(browser, server)
    set_max_new_tokens(page, 4)
    ask(page, text)
    user = page.locator("#chatbot [data-testid=user]").last
    expect(user).to_contain_text('<b id="injected">bold</b>')  # the tags as text
    expect(user).to_contain_text("<i>code</i>")
    for injected in ("#injected", "#jslink", "#chatbot script", f"#chatbot img[src^='{elsewhere}/tag']"):
        expect(page.locator(injected)).to_have_count(0)
    page.locator("#chatbot img[alt=pixel]").first.click()  # give the markdown image every chance to load
    page.wait_for_timeout(500)
    assert page.evaluate("window.__pwned") is None
    assert hits == [], f"the page fetched {hits} from another host"
    keep(page, artifacts_dir, "chat-html-as-text")
    # Undo gives back exactly what was typed (the escaping is invisible to the person and the model).
    page.locator("#chatbot button[aria-label=Undo]").last.click()
    expect(page.locator("#chat-input textarea")).to_have_value(text)
    page.context.close()
    http.shutdown()


def test_with_a_login_the_page_asks_for_it_then_works(browser, tmp_path_factory, artifacts_dir):
    """The login guard in front of every route lets the login page and, after it, the app through."""
    proc, url = start_app(shared_cache(tmp_path_factory), artifacts_dir / "test_browser.auth.server.log",
                          "--auth", "ann:s3cret")
    try:
        page = browser.new_context(viewport=DESKTOP).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        for password in ("wrong", "s3cret"):  # a failed login clears the form: fill both fields each time
            page.locator("input").first.fill("ann")
            page.fill("input[type=password]", password)
            page.keyboard.press("Enter")
            if password == "wrong":
                toast(page, "Incorrect")
        page.wait_for_selector("#chat-input textarea")
        set_max_new_tokens(page, 4)
        ask(page, "Hello")
        playwright_api.expect(page.locator("#chatbot [data-testid=bot]")).to_have_count(1)
        keep(page, artifacts_dir, "login-then-chat")
        page.context.close()
    finally:
        stop_app(proc)


def test_the_chat_draws_then_talks_about_the_drawing(browser, server, artifacts_dir):
    """/imagine in the chat: the forming image and its progress in the answer's place, then the image;
    a question about it is answered (the model sees it: test_chat_draws.py); Draw mode and Draw the
    last answer; a stopped drawing leaves the chat usable."""
    expect = playwright_api.expect
    page = open_page(browser, server)
    set_max_new_tokens(page, 6)
    bots = page.locator("#chatbot [data-testid=bot]")
    page.evaluate(WATCH_CHAT_RUNS)
    page.fill("#chat-input textarea", "/imagine a lighthouse on a cliff at dusk")
    page.click("#chat-input [data-testid=submit-button]")
    drawings = page.locator("#chatbot [data-testid=bot] img")  # (an image and its text are two bubbles)
    expect(bots.last).to_contain_text("Generating image tokens")  # progress, in the conversation
    expect(drawings).to_have_count(1)  # the forming preview
    keep(page, artifacts_dir, "chat-drawing-forms")
    page.wait_for_function("() => window.__chatRuns >= 1", timeout=TIMEOUT_MS)
    expect(bots.last).to_contain_text("a lighthouse on a cliff at dusk")  # the caption: prompt and seed
    expect(bots.last).to_contain_text("seed")
    expect(drawings).to_have_count(1)
    drawings.first.evaluate("img => img.decode()")
    assert drawings.first.evaluate("img => img.naturalWidth") == 384
    # Retry draws again with a new seed (Randomize image seed is on); Undo gives the request back.
    import re

    seed = re.search(r"seed (\d+)", bots.last.inner_text()).group(1)
    chat_run(page, lambda: page.locator("#chatbot button[aria-label=Retry]").last.click())
    expect(drawings).to_have_count(1)
    assert re.search(r"seed (\d+)", bots.last.inner_text()).group(1) != seed
    page.locator("#chatbot button[aria-label=Undo]").last.click()
    expect(drawings).to_have_count(0)
    expect(page.locator("#chat-input textarea")).to_have_value("/imagine a lighthouse on a cliff at dusk")
    chat_run(page, lambda: page.click("#chat-input [data-testid=submit-button]"))
    expect(drawings).to_have_count(1)
    answers_before = bots.count()
    ask(page, "Is the light on?")
    expect(bots).to_have_count(answers_before + 1)
    assert bots.last.inner_text().strip()
    keep(page, artifacts_dir, "chat-draws-then-talks")

    # "Draw the last answer" makes it the next prompt, with Draw mode on; Draw mode adds /imagine.
    page.click("#chat-draw-this")
    expect(page.locator("#chat-draw input")).to_be_checked()
    expect(page.locator("#chat-input textarea")).not_to_have_value("")
    page.fill("#chat-input textarea", "a red fox in the snow")
    chat_run(page, lambda: page.click("#chat-input [data-testid=submit-button]"))
    expect(page.locator("#chatbot [data-testid=user]").last).to_have_text("/imagine a red fox in the snow")
    expect(drawings).to_have_count(2)
    page.context.close()

    # Stopped while drawing (4 images: long enough to stop on the way), the chat goes on.
    page = open_page(browser, server)
    set_max_new_tokens(page, 6)
    page.fill("#chat-num-images input[type=number]", "4")
    page.press("#chat-num-images input[type=number]", "Enter")
    page.locator("#chat-draw input").check()
    page.fill("#chat-input textarea", "a red fox in the snow")
    page.click("#chat-input [data-testid=submit-button]")
    bots = page.locator("#chatbot [data-testid=bot]")
    expect(bots.last).to_contain_text("Generating image tokens")
    page.locator("#chat-input button[aria-label=Stop]").click()
    expect(bots.last).to_contain_text("Drawing stopped")
    expect(page.locator("#chat-input textarea")).to_be_enabled()
    page.locator("#chat-draw input").uncheck()
    ask(page, "Hello again")
    expect(bots).to_have_count(2)
    keep(page, artifacts_dir, "chat-drawing-stopped")
    page.context.close()


def test_send_to_chat_from_the_gallery(browser, server, artifacts_dir):
    expect = playwright_api.expect
    page = open_page(browser, server)
    page.get_by_role("tab", name="Text to image").click()
    page.fill("#t2i-num-images input[type=number]", "1")
    page.press("#t2i-num-images input[type=number]", "Enter")
    page.fill("#t2i-prompt textarea", "A bowl of ramen")
    page.click("#t2i-generate")
    thumbnail = page.locator("#t2i-gallery .thumbnail-item img")
    expect(thumbnail).to_have_count(1)
    expect(page.locator("#t2i-send")).to_be_disabled()  # nothing chosen yet
    thumbnail.first.click()
    page.click("#t2i-send")
    expect(page.locator("#chat-input textarea")).to_be_visible()  # the Chat tab is open ...
    expect(page.locator("#chat-input img")).to_have_count(1)  # ... with the image attached
    set_max_new_tokens(page, 4)
    ask(page, "What is in this bowl?")
    expect(page.locator("#chatbot [data-testid=user] img")).to_have_count(1)
    expect(page.locator("#chatbot [data-testid=bot]")).to_have_count(1)
    keep(page, artifacts_dir, "gallery-sent-to-chat")
    page.context.close()
