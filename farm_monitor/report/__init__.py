"""The farm report: daily or weekly, by email (HTML with inline PNG charts) and as a PDF.

See docs/reports.md. :func:`build_farm_report` reads the monitor database; :func:`build_report_email`
wraps a report in a multipart/related mail; :func:`deliver_due_reports` sends each subscriber's
report once per period over SMTP.
"""

from .build import FarmReport, build_farm_report
from .deliver import ReportSubscription, deliver_due_reports, due_period, load_report_subscriptions
from .mail import build_report_email

__all__ = [
    "FarmReport",
    "ReportSubscription",
    "build_farm_report",
    "build_report_email",
    "deliver_due_reports",
    "due_period",
    "load_report_subscriptions",
]
