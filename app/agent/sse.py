"""Server-sent events read straight from the bytes of a streamed response.

The OpenAI SDK's own decoder builds an object per line and per event in pure Python; a chat
completion needs only each event's data, so this reads it with a few bytes operations a read.
The format is WHATWG's event stream: lines end in LF, CRLF or CR (a CRLF may be cut between two
reads), a blank line ends an event, a line that begins with a colon is a comment, a field's
value loses one leading space, an event's data lines are joined with LF, and an event that has
no data line, or that the stream ends before, is no event.
"""

LF, CR, BLANK = b"\n", b"\r", b"\n\n"


def data_events(chunks):
    """Yield the data (bytes) of each event in an iterable of byte strings."""
    held = []  # the bytes of an event not yet ended, normalised to LF
    last = b""  # the last byte held: a LF there and at the start of a read make a blank line
    cr = False  # the last read ended in CR: a LF starting the next one belongs to it
    for chunk in chunks:
        if not chunk:
            continue
        if cr and chunk[:1] == LF:
            chunk = chunk[1:]
        cr = chunk[-1:] == CR
        if CR in chunk:
            chunk = chunk.replace(b"\r\n", LF).replace(CR, LF)
        if not chunk:
            continue
        if BLANK not in chunk and not (last == LF and chunk[:1] == LF):
            held.append(chunk)  # the event goes on: most reads end one, so this is rare
            last = chunk[-1:]
            continue
        if held:
            held.append(chunk)
            chunk = b"".join(held)
            held = []
        *ended, rest = chunk.split(BLANK)
        if rest:
            held.append(rest)
        last = chunk[-1:]
        for event in ended:
            data = _data(event)
            if data is not None:
                yield data


def _data(event):
    """Return an event's data, or None if it has no data line."""
    if event[:6] == b"data: " and LF not in event:  # the usual event: one data line
        return event[6:]
    data = None
    for line in event.split(LF):
        if not line or line[:1] == b":":  # a blank line left by a run of them, or a comment
            continue
        name, _, value = line.partition(b":")
        if name != b"data":  # event, id and retry: nothing a chat completion needs
            continue
        if value[:1] == b" ":
            value = value[1:]
        data = value if data is None else data + LF + value
    return data
