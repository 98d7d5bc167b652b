#!/usr/bin/env python3
"""Logs in with clients nobody here wrote: Python's own imaplib and smtplib.

Reads what mailconnect's token route returned (its JSON body) on stdin and
uses only that: `imap.host`/`port`, `imap.xoauth2` for IMAP AUTHENTICATE
XOAUTH2 (imaplib sends it after the server's continuation, without SASL-IR),
then opens INBOX read-only; `smtp.host`/`port`, STARTTLS, `AUTH XOAUTH2`
with `smtp.xoauth2`, then `MAIL FROM` with `smtp.mail_from`, and QUIT (no
mail is sent). The TLS trust is the CA file named by the first argument.
Prints one JSON line: each step's reply code or the error it raised.
"""

import base64
import imaplib
import json
import smtplib
import ssl
import sys


def main() -> None:
    grant = json.load(sys.stdin)
    ctx = ssl.create_default_context(cafile=sys.argv[1])
    out = {}

    imap = grant["imap"]
    try:
        conn = imaplib.IMAP4_SSL(imap["host"], imap["port"], ssl_context=ctx, timeout=10)
        raw = base64.b64decode(imap["xoauth2"])
        typ, _ = conn.authenticate("XOAUTH2", lambda _challenge: raw)
        out["imap_login"] = typ
        typ, _ = conn.select("INBOX", readonly=True)
        out["imap_examine"] = typ
        conn.logout()
    except (imaplib.IMAP4.error, OSError) as e:
        out.setdefault("imap_login", "error")
        out["imap_error"] = str(e)

    smtp = grant["smtp"]
    try:
        conn = smtplib.SMTP(smtp["host"], smtp["port"], timeout=10)
        conn.ehlo()
        conn.starttls(context=ctx)
        conn.ehlo()
        code, _ = conn.docmd("AUTH", "XOAUTH2 " + smtp["xoauth2"])
        out["smtp_auth"] = code
        if code == 235:
            code, _ = conn.docmd("MAIL", "FROM:<%s>" % smtp["mail_from"])
            out["smtp_mail_from"] = code
        conn.quit()
    except (smtplib.SMTPException, OSError) as e:
        out["smtp_error"] = str(e)

    print(json.dumps(out))


if __name__ == "__main__":
    main()
