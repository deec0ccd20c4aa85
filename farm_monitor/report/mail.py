"""The report as one mail: text and HTML alternatives, the HTML's PNGs inline, the PDF attached.

Standard library ``email`` rather than Apprise (which delivers the alerts): Apprise's email
plugin sends a body and file attachments but cannot put images inline by Content-ID, so its
HTML could not show the charts where the numbers stand.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from .build import FarmReport


def build_report_email(
    report: FarmReport, to_addr: str, from_addr: str, *, attach_pdf: bool = True, now: datetime | None = None
) -> EmailMessage:
    """multipart/mixed [ multipart/alternative [ text/plain, multipart/related [ text/html, image/png ... ] ], PDF ].

    Each image's Content-ID is ``<key>`` of ``report.images``, which the HTML names as ``cid:key``.
    """
    msg = EmailMessage()
    msg["Subject"] = report.subject
    msg["From"] = from_addr
    msg["To"] = to_addr
    msg["Date"] = format_datetime(now or datetime.now(UTC))
    msg["Message-ID"] = make_msgid("report", domain=from_addr.rpartition("@")[2] or "cropwatch")
    msg.set_content(report.text)
    msg.add_alternative(report.html, subtype="html")
    html_part = list(msg.iter_parts())[1]
    assert isinstance(html_part, EmailMessage)  # add_alternative made it one
    for cid, png in report.images.items():
        html_part.add_related(png, maintype="image", subtype="png", cid=f"<{cid}>",
                              filename=f"{cid.partition('@')[0]}.png")  # fmt: skip
    if attach_pdf:
        msg.add_attachment(report.pdf, maintype="application", subtype="pdf", filename=report.pdf_name)
    return msg
