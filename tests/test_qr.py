"""Invoice QR codes: drawn by segno from the invoice's lightning: URI, markup that carries no text."""
import re

import segno
from markupsafe import Markup

from app import qr


def test_the_svg_is_the_qr_code_of_the_upper_case_lightning_uri():
    invoice = "lnbcrt100n1p43ys32pp546a8nrkxmujhf8dtsh4jwaxcenxpeyd5jqg2ztvvlz8lqlxr4llqsp56plladq6m3p0e4lhet"
    svg = qr.lightning_qr(invoice)
    assert isinstance(svg, Markup) and svg.startswith('<svg viewBox="0 0 ') and 'class="qr"' in svg
    again = segno.make("LIGHTNING:" + invoice.upper(), error="m", micro=False)
    assert again.mode == "alphanumeric"  # why upper case: the compact mode
    assert str(svg) == again.svg_inline(svgclass="qr", lineclass=None, omitsize=True, border=4)


def test_no_text_of_the_invoice_reaches_the_markup():
    svg = str(qr.lightning_qr('lnbc1"><script>alert(1)</script><img src=x onerror=alert(2)>'))
    assert re.fullmatch(r'<svg viewBox="0 0 \d+ \d+" class="qr"><path stroke="#000" d="[Mmhv0-9. -]+"/></svg>', svg)


def test_an_invoice_too_long_for_any_qr_code_gets_none():
    assert qr.lightning_qr("lnbc1" + "q" * 5000) == ""
