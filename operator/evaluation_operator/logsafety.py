"""Keep credentials out of the operator's logs at every verbosity.

Kopf's --verbose and --debug set the root logger to DEBUG. At DEBUG, botocore logs every
request with its headers (the session token in X-Amz-Security-Token, the access key id in
Authorization) and its canonical request, and urllib3 logs full URLs (a presigned URL carries
the token in its query). These libraries never log anything an operator needs below WARNING,
so they are held at WARNING whatever the verbosity; their levels are set on their own loggers,
which Kopf's logging setup leaves alone.
"""

from __future__ import annotations

import logging

QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def quiet_credential_loggers() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
