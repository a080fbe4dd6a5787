#!/usr/bin/env python3
"""A kinfer worker in Python, with the standard library only: the worker
contract in the language most models are written in.

kinfer runs the model's container with:
  KINFER_REQUEST_ID   the client's id
  KINFER_MODEL        the InferenceModel's name
  KINFER_INPUT        the input, as JSON ("null" when there is none)
and reads the result from the container's termination message file
(KINFER_RESULT_PATH when set, else /dev/termination-log). Kubernetes keeps at
most 4096 bytes of it. Exit 0 on success; exit 42 for input that can never
work (kinfer does not retry it); any other code fails the attempt, and
Kubernetes retries the pod up to the model's maxRetries.

This one counts the words of {"text": "..."}; put your model where count() is.
"""

import json
import os
import sys

MAX_RESULT_BYTES = 4096
EXIT_BAD_INPUT = 42


def count(text):
    return {"words": len(text.split()), "characters": len(text)}


def finish(path, message, code):
    with open(path, "w", encoding="utf-8") as f:
        f.write(message)
    if code != 0:
        print(message, file=sys.stderr)
    sys.exit(code)


def main():
    path = os.environ.get("KINFER_RESULT_PATH") or "/dev/termination-log"
    try:
        payload = json.loads(os.environ.get("KINFER_INPUT") or "null")
    except json.JSONDecodeError:
        finish(path, "KINFER_INPUT is not valid JSON", EXIT_BAD_INPUT)
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        finish(path, 'input must be {"text": "..."}', EXIT_BAD_INPUT)

    try:
        result = json.dumps(count(payload["text"]), separators=(",", ":"))
    except Exception as err:  # the model failed: let Kubernetes retry it
        finish(path, "inference failed: %s" % err, 1)
    if len(result.encode()) > MAX_RESULT_BYTES:
        finish(path, "the result is %d bytes; at most %d are kept" % (len(result.encode()), MAX_RESULT_BYTES), 3)
    finish(path, result, 0)


if __name__ == "__main__":
    main()
