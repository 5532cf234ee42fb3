"""Free chat: a short reply, no invoice, no ticker, three messages a minute with a friendly limit."""
from app.models import Invoice, Job


def test_chat_replies_without_invoice_or_ticker(client, app):
    response = client.post("/chat", data={"message": "Hello <Timmy>"}, headers={"HX-Request": "true"})
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Hello &lt;Timmy&gt;" in body and "class=\"chat-timmy\"" in body
    assert 'class="ticker"' not in body and "lnbc" not in body and "sse-connect" not in body
    assert 'id="chat-input"' in body and 'hx-swap-oob="true"' in body  # the input is emptied
    with app.app_context():
        assert Job.query.count() == 0 and Invoice.query.count() == 0


def test_chat_without_javascript_renders_the_page_with_the_reply(client):
    body = client.post("/chat", data={"message": "hi"}).get_data(as_text=True)
    assert "<html" in body and "chat-timmy" in body


def test_chat_is_limited_per_visitor_with_a_friendly_message(client, app):
    for _ in range(3):
        assert client.post("/chat", data={"message": "hi"}, headers={"HX-Request": "true"}).status_code == 200
    response = client.post("/chat", data={"message": "hi"}, headers={"HX-Request": "true"})
    assert response.status_code == 429
    assert "Timmy can chat 3 messages a minute" in response.get_data(as_text=True)
    assert "<html" not in response.get_data(as_text=True)  # a fragment for the chat log
    other = app.test_client()  # another visitor has their own allowance
    assert other.post("/chat", data={"message": "hi"}, headers={"HX-Request": "true"}).status_code == 200


def test_empty_chat_messages_get_a_clear_message(client):
    response = client.post("/chat", data={"message": "  "}, headers={"HX-Request": "true"})
    body = response.get_data(as_text=True)
    assert response.status_code == 400 and "the message is empty" in body and "job" not in body
    long = client.post("/chat", data={"message": "x" * 1001}, headers={"HX-Request": "true"})
    assert long.status_code == 413 and "The message is too long: 1,001 characters" in long.get_data(as_text=True)


def test_refused_chat_messages_cost_no_allowance(client):
    """An empty or over-long message is refused and leaves the visitor's 3 a minute whole."""
    chat = lambda message: client.post("/chat", data={"message": message}, headers={"HX-Request": "true"})
    assert [chat("").status_code, chat("x" * 1001).status_code] == [400, 413]
    assert [chat("hi").status_code for _ in range(4)] == [200, 200, 200, 429]
