"""Feedback over HTTP (`POST /v1/feedback`): the same validation and storage as the websocket."""
from __future__ import annotations

from fastapi import APIRouter, Request
from redis.exceptions import RedisError

from service.api.common import ApiError, bearer_user, json_body, require_ready
from service.serving.feedback import FeedbackRateLimited
from service.serving.protocol import ProtocolError, parse_feedback

router = APIRouter()


@router.post("/v1/feedback")
async def post_feedback(request: Request):
    user = bearer_user(request)
    runtime = require_ready(request)
    body = await json_body(request)
    try:
        fb = parse_feedback(body)
        duplicate, fields = await runtime.feedback.record(fb, user)
    except FeedbackRateLimited as err:   # the websocket's per-user rule
        raise ApiError(429, err.code, err.message, headers={"Retry-After": err.retry_after_header}) from None
    except ProtocolError as err:
        status = {"unknown_reply": 404, "forbidden": 403}.get(err.code, 400)
        raise ApiError(status, err.code, err.message) from None
    except RedisError:
        raise ApiError(503, "unavailable", "storage is unavailable for a moment; nothing was recorded: "
                       "retry in a few seconds with the same feedback_id", headers={"Retry-After": "2"}) from None
    return {"feedback_id": fb.feedback_id, "duplicate": duplicate, "status": "stored"}
