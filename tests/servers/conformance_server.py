"""SDK-built MCP server carrying every fixture the MCP conformance suite's server scenarios call.

One ``MCPServer`` serves both protocol eras: the 2025-11-25 ``initialize`` handshake and the stateless 2026-07-28
revision (per-request ``_meta`` envelope, ``server/discover``, ``subscriptions/listen``, and the multi-round-trip
"input required" flow). The fixtures (``test_*`` tools, ``test://`` resources, ``test_*`` prompts, completions)
follow the contract written in each scenario's description in the conformance suite.

Run (from the repository root):

- ``python -m tests.servers.conformance_server --transport http --port P [--host 127.0.0.1] [--modern-only]``:
  streamable HTTP at ``/mcp``, plus ``GET /healthz``. Once listening it prints ``READY <port>`` on stdout
  (flushed); ``--port 0`` picks a free port and reports it in that line.
- ``python -m tests.servers.conformance_server --transport stdio [--modern-only]``: over stdin/stdout.

``--modern-only`` serves 2026-07-28 alone. The SDK always serves both eras and has no switch for this, so a thin
wrapper per transport refuses the 2025 era with the error the SDK itself gives a version it does not serve:
JSON-RPC ``-32022`` with ``data = {"supported": ["2026-07-28"], "requested": <version>}``.

- HTTP: an ASGI wrapper in front of the SDK's app answers, with status 400, every POST the SDK would route to the
  2025 era: one whose ``MCP-Protocol-Version`` header names a handshake version, or that has no such header (the
  spec then assumes 2025-03-26). ``requested`` is the version an ``initialize`` proposes, else the header's.
  POSTs with a 2026 (or unknown) version header reach the SDK untouched, so all its own checks still apply.
- stdio: a ``ServerMiddleware`` (the SDK's hook for vetoing the handshake) refuses every request on a 2025-era
  connection, ``initialize`` first; ``requested`` is the version ``initialize`` proposes, else the connection's.
  The SDK fixes a stdio connection's era at its first request, so a refused client must reconnect to speak
  2026-07-28 (a 2026 client, or ``mode="auto"``, starts with a 2026 request anyway).

Input required (2026-07-28): the ``test_input_required_*`` fixtures return ``InputRequiredResult`` and read the
answers from ``Context.input_responses`` / ``Context.request_state``. ``MCPServer`` seals every outgoing
``requestState`` and verifies every echo (its default ``RequestStateSecurity.ephemeral()``: AES-GCM under a
per-process random key), so a tampered state is rejected before any handler runs. The fixtures that need the client
in either era (``test_sampling``, ``test_elicitation*``, ``test_missing_capability``, ``test_streaming_elicitation``)
use the SDK's resolvers (``Resolve`` with ``Sample``/``Elicit``): an ``InputRequiredResult`` at 2026-07-28, a
server-to-client request at 2025-11-25, and error ``-32021`` when the client did not declare the capability.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

import anyio
import uvicorn
from mcp.server.caching import CacheHint
from mcp.server.context import HandlerResult, ServerRequestContext
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    Elicit,
    ElicitationResult,
    MCPServer,
    Resolve,
    Sample,
)
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.prompts.base import Message, Prompt, UserMessage
from mcp.server.runner import CallNext
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.types import (
    DEFAULT_NEGOTIATED_VERSION,
    INVALID_REQUEST,
    UNSUPPORTED_PROTOCOL_VERSION,
    AudioContent,
    ClientCapabilities,
    Completion,
    CompletionArgument,
    CompletionContext,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    EmbeddedResource,
    EmptyResult,
    ErrorData,
    ImageContent,
    InputRequest,
    InputRequiredResult,
    ListRootsRequest,
    ListRootsResult,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
    UnsupportedProtocolVersionErrorData,
)
from mcp.types.methods import CacheableMethod
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field, WithJsonSchema
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from tests.servers.ready import ReadyServer, add_healthz

# A 1x1 PNG and a tiny WAV: the payloads of the image and audio fixtures.
PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV_BASE64 = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

# Nothing here is per-user, but the tool and prompt lists change whenever a trigger tool runs: shareable results
# that are stale at once.
CACHE_HINT = CacheHint(ttl_ms=0, scope="public")

# Completion candidates, by prompt argument or template variable name.
COMPLETIONS: dict[str, list[str]] = {
    "arg1": ["paris", "park", "party"],
    "arg2": ["alpha", "beta", "gamma"],
    "id": ["1", "42", "123"],
}


def create_server(name: str = "mcp-conformance-server") -> MCPServer:
    """Build the server with every fixture; `main` adds the `--modern-only` wrapper for its transport."""
    server: MCPServer = MCPServer(
        name,
        version="1.0.0",
        log_level="WARNING",
        cache_hints=dict.fromkeys(get_args(CacheableMethod), CACHE_HINT),
    )
    _add_content_tools(server)
    _add_behaviour_tools(server)
    _add_client_request_tools(server)
    _add_input_required_tools(server)
    _add_request_state_tools(server)
    _add_resources(server)
    _add_prompts(server)
    _add_completions(server)
    _add_handshake_era_methods(server)

    add_healthz(server)
    return server


def _add_content_tools(server: MCPServer) -> None:
    """Tools returning each kind of content block (tools-call-* scenarios)."""

    @server.tool(description="Return one text block.")
    def test_simple_text() -> str:
        return "This is a simple text response for testing."

    @server.tool(description="Return one PNG image block.")
    def test_image_content() -> list[ImageContent]:
        return [ImageContent(type="image", data=PNG_BASE64, mime_type="image/png")]

    @server.tool(description="Return one WAV audio block.")
    def test_audio_content() -> list[AudioContent]:
        return [AudioContent(type="audio", data=WAV_BASE64, mime_type="audio/wav")]

    @server.tool(description="Return one embedded text resource.")
    def test_embedded_resource() -> list[EmbeddedResource]:
        resource = TextResourceContents(
            uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
        )
        return [EmbeddedResource(type="resource", resource=resource)]

    @server.tool(description="Return a text, an image and an embedded resource block.")
    def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
        resource = TextResourceContents(
            uri="test://mixed-content-resource", mime_type="application/json", text='{"test": "data", "value": 123}'
        )
        return [
            TextContent(type="text", text="Multiple content types test:"),
            ImageContent(type="image", data=PNG_BASE64, mime_type="image/png"),
            EmbeddedResource(type="resource", resource=resource),
        ]


def _dynamic() -> str:
    """Registered and removed again by the trigger tools."""
    return "dynamic"


def _add_behaviour_tools(server: MCPServer) -> None:
    """Tools that fail, log, report progress, take a header-mirrored argument, or change the server's lists."""

    @server.tool(description="Always fail (an isError result).")
    def test_error_handling() -> str:
        raise ToolError("This tool intentionally returns an error for testing")

    @server.tool(description="Log three info lines while running (2025-11-25: always sent; 2026-07-28: opt-in).")
    async def test_tool_with_logging(ctx: Context) -> str:
        for line in ("Tool execution started", "Tool processing data", "Tool execution completed"):
            await ctx.info(line)
            await anyio.sleep(0.05)
        return "Tool with logging executed successfully"

    @server.tool(description="Log one line; at 2026-07-28 it reaches the client only if the request set a logLevel.")
    async def test_logging_tool(ctx: Context) -> str:
        await ctx.info("Diagnostic trace logging activated")
        return "Logging evaluated"

    @server.tool(description="Report progress 0, 50 and 100 of 100 (sent when the request carries a progressToken).")
    async def test_tool_with_progress(ctx: Context) -> str:
        for progress in (0, 50, 100):
            await ctx.report_progress(progress, 100, f"Completed step {progress} of 100")
            await anyio.sleep(0.05)
        return "Progress reported"

    @server.tool(description="Echo the region, which 2026-07-28 clients mirror in the Mcp-Param-Region header.")
    def test_x_mcp_header(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]) -> str:
        return f"region={region}"

    @server.tool(description="Add and remove a tool, then announce that the tool list changed.")
    async def test_trigger_tool_change(ctx: Context) -> str:
        server.add_tool(_dynamic, name="test_dynamic_tool")
        server.remove_tool("test_dynamic_tool")
        await ctx.notify_tools_changed()
        return "tool list changed"

    @server.tool(description="Add and remove a prompt, then announce that the prompt list changed.")
    async def test_trigger_prompt_change(ctx: Context) -> str:
        server.add_prompt(Prompt.from_function(_dynamic, name="test_dynamic_prompt"))
        server.remove_prompt("test_dynamic_prompt")
        await ctx.notify_prompts_changed()
        return "prompt list changed"


class UserInfo(BaseModel):
    """What `test_elicitation` asks for."""

    username: str = Field(description="User's response")
    email: str = Field(description="User's email address")


class Confirmation(BaseModel):
    """A yes/no answer."""

    ok: bool = Field(description="Proceed?")


class ProfileWithDefaults(BaseModel):
    """One field of each primitive type, each with a default (SEP-1034)."""

    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: Literal["active", "inactive", "pending"] = Field(default="active", description="User status")
    verified: bool = Field(default=True, description="Verification status")


def _titled(*titles: str) -> list[dict[str, str]]:
    return [{"const": f"value{n}", "title": title} for n, title in enumerate(titles, 1)]


class EnumVariants(BaseModel):
    """The five enum shapes of SEP-1330; the titled ones keep validated values but carry the spec's schema."""

    untitledSingle: Literal["option1", "option2", "option3"]
    titledSingle: Annotated[
        Literal["value1", "value2", "value3"],
        WithJsonSchema({"type": "string", "oneOf": _titled("First Option", "Second Option", "Third Option")}),
    ]
    legacyEnum: Annotated[
        Literal["opt1", "opt2", "opt3"],
        WithJsonSchema(
            {
                "type": "string",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"],
            }
        ),
    ]
    untitledMulti: list[Literal["option1", "option2", "option3"]]
    titledMulti: Annotated[
        list[Literal["value1", "value2", "value3"]],
        WithJsonSchema({"type": "array", "items": {"anyOf": _titled("First Choice", "Second Choice", "Third Choice")}}),
    ]


# Resolvers: each returns the request marker the SDK turns into a question for the client.


def _sample_prompt(prompt: str) -> Sample:
    return Sample([SamplingMessage(role="user", content=TextContent(type="text", text=prompt))], max_tokens=100)


def _ask_model_for_go_ahead() -> Sample:
    return _sample_prompt("Reply with OK if the operation may proceed.")


def _ask_for_user_info(message: str) -> Elicit[UserInfo]:
    return Elicit(message, UserInfo)


def _ask_for_profile() -> Elicit[ProfileWithDefaults]:
    return Elicit("Please provide user information", ProfileWithDefaults)


def _ask_for_enum_choices() -> Elicit[EnumVariants]:
    return Elicit("Please select values using different enum schema types", EnumVariants)


def _ask_to_proceed() -> Elicit[Confirmation]:
    return Elicit("Proceed with the operation?", Confirmation)


def _text_of(result: CreateMessageResult) -> str:
    return result.content.text if isinstance(result.content, TextContent) else f"<{result.content.type}>"


def _outcome(answer: ElicitationResult[Any]) -> str:
    content = answer.data.model_dump_json() if isinstance(answer, AcceptedElicitation) else "{}"
    return f"action={answer.action}, content={content}"


def _add_client_request_tools(server: MCPServer) -> None:
    """Tools that need the client (sampling, elicitation), written with the SDK's resolvers so they work in both
    eras: a server-to-client request at 2025-11-25, an `InputRequiredResult` at 2026-07-28."""

    @server.tool(description="Ask the client's LLM to answer the prompt (sampling).")
    def test_sampling(prompt: str, reply: Annotated[CreateMessageResult, Resolve(_sample_prompt)]) -> str:
        return f"LLM response: {_text_of(reply)}"

    @server.tool(description="Ask the user for a username and email (elicitation) with the given message.")
    def test_elicitation(
        message: str, answer: Annotated[ElicitationResult[UserInfo], Resolve(_ask_for_user_info)]
    ) -> str:
        return f"User response: {_outcome(answer)}"

    @server.tool(description="Elicit a form whose fields all carry defaults (SEP-1034).")
    def test_elicitation_sep1034_defaults(
        answer: Annotated[ElicitationResult[ProfileWithDefaults], Resolve(_ask_for_profile)],
    ) -> str:
        return f"Elicitation completed: {_outcome(answer)}"

    @server.tool(description="Elicit a form using each enum schema variant (SEP-1330).")
    def test_elicitation_sep1330_enums(
        answer: Annotated[ElicitationResult[EnumVariants], Resolve(_ask_for_enum_choices)],
    ) -> str:
        return f"Elicitation completed: {_outcome(answer)}"

    @server.tool(description="Needs the client's sampling capability: without it the call fails with -32021.")
    def test_missing_capability(reply: Annotated[CreateMessageResult, Resolve(_ask_model_for_go_ahead)]) -> str:
        return f"Client declared sampling; the model replied: {_text_of(reply)}"

    @server.tool(description="Ask the user to confirm; at 2026-07-28 the question rides the response, not a request.")
    def test_streaming_elicitation(confirmation: Annotated[Confirmation, Resolve(_ask_to_proceed)]) -> str:
        return f"Streaming complete (confirmed: {confirmation.ok})"


# The 2026-07-28 multi-round-trip fixtures (input-required-result-* scenarios), written with the SDK's
# `InputRequiredResult` directly because the suite names the keys of the questions. Each fixture asks until the
# retried request carries the answers it needs; a retry with missing or wrongly keyed answers is asked again.


def _ask(ctx: Context, requests: dict[str, InputRequest], request_state: str | None = None) -> InputRequiredResult:
    """Ask the client for input; only the 2026-07-28 era has `InputRequiredResult` to carry the questions."""
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        raise MCPError(
            code=INVALID_REQUEST,
            message=f"This fixture needs protocol 2026-07-28; the connection speaks {ctx.protocol_version}",
        )
    return InputRequiredResult(input_requests=requests, request_state=request_state)


def _elicitation(message: str, field: str, field_type: str) -> ElicitRequest:
    schema = {"type": "object", "properties": {field: {"type": field_type}}, "required": [field]}
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _sampling(text: str, max_tokens: int) -> CreateMessageRequest:
    message = SamplingMessage(role="user", content=TextContent(type="text", text=text))
    return CreateMessageRequest(params=CreateMessageRequestParams(messages=[message], max_tokens=max_tokens))


def _accepted(ctx: Context, key: str) -> dict[str, Any] | None:
    """The content of the accepted elicitation answered under `key`, if the client sent one."""
    answer = (ctx.input_responses or {}).get(key)
    if isinstance(answer, ElicitResult) and answer.action == "accept":
        return dict(answer.content or {})
    return None


def _declared_input_requests(capabilities: ClientCapabilities | None) -> dict[str, InputRequest]:
    """One question per client capability (sampling, elicitation, roots) that `capabilities` declares."""
    if capabilities is None:
        return {}
    requests: dict[str, InputRequest] = {}
    if capabilities.sampling is not None:
        requests["sample"] = _sampling("Say hello", 50)
    if capabilities.elicitation is not None:
        requests["ask"] = _elicitation("What is your name?", "name", "string")
    if capabilities.roots is not None:
        requests["roots"] = ListRootsRequest()
    return requests


def _add_input_required_tools(server: MCPServer) -> None:
    """Fixtures asking one kind of question: an elicitation, a sampling request, a roots/list request, or what the
    client's declared capabilities allow."""

    @server.tool(description="Ask for the user's name (one elicitation), then greet them.")
    def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
        answer = _accepted(ctx, "user_name")
        if answer is None:
            return _ask(ctx, {"user_name": _elicitation("What is your name?", "name", "string")})
        return f"Hello, {answer.get('name', 'stranger')}!"

    @server.tool(description="Ask the client's LLM a question (one sampling request), then report its answer.")
    def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
        answer = (ctx.input_responses or {}).get("capital_question")
        if not isinstance(answer, CreateMessageResult):
            return _ask(ctx, {"capital_question": _sampling("What is the capital of France?", 100)})
        return f"Model said: {_text_of(answer)}"

    @server.tool(description="Ask for the client's roots (one roots/list request), then list them.")
    def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
        answer = (ctx.input_responses or {}).get("client_roots")
        if not isinstance(answer, ListRootsResult):
            return _ask(ctx, {"client_roots": ListRootsRequest()})
        return f"Client exposed {len(answer.roots)} root(s): {', '.join(str(root.uri) for root in answer.roots)}"

    @server.tool(description="Ask only for the inputs whose capability the client declared on this request.")
    def test_input_required_result_capabilities(ctx: Context) -> str | InputRequiredResult:
        requests = _declared_input_requests(ctx.client_capabilities)
        if not requests:
            return "The client declared none of sampling, elicitation or roots: nothing to ask."
        if requests.keys() <= (ctx.input_responses or {}).keys():
            return f"Received: {', '.join(sorted(requests))}"
        return _ask(ctx, requests)


def _add_request_state_tools(server: MCPServer) -> None:
    """Fixtures carrying `requestState` across rounds. The SDK seals it on the way out and verifies the echo, so
    handlers see only plaintext they minted, and a tampered echo is rejected before any handler runs."""

    @server.tool(description="Ask for a confirmation with a requestState, and complete only when it comes back.")
    def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
        if ctx.request_state == "awaiting-confirmation" and _accepted(ctx, "confirm") is not None:
            return "state-ok: confirmation received with the requestState this server issued"
        return _ask(ctx, {"confirm": _elicitation("Please confirm", "ok", "boolean")}, "awaiting-confirmation")

    @server.tool(description="Ask for an elicitation, a sampling and a roots/list answer at once.")
    def test_input_required_result_multiple_inputs(ctx: Context) -> str | InputRequiredResult:
        requests: dict[str, InputRequest] = {
            "user_name": _elicitation("What is your name?", "name", "string"),
            "greeting": _sampling("Generate a greeting", 50),
            "client_roots": ListRootsRequest(),
        }
        if ctx.request_state == "all-three" and requests.keys() <= (ctx.input_responses or {}).keys():
            return "All inputs received."
        return _ask(ctx, requests, "all-three")

    @server.tool(description="Ask for a name, then a colour, carrying the progress in requestState across rounds.")
    def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
        state = json.loads(ctx.request_state) if ctx.request_state else {}
        name = _accepted(ctx, "step1")
        if state.get("round") == 1 and name is not None:
            question = _elicitation("Step 2: What is your favorite color?", "color", "string")
            return _ask(ctx, {"step2": question}, json.dumps({"round": 2, "name": name.get("name")}))
        color = _accepted(ctx, "step2")
        if state.get("round") == 2 and color is not None:
            return f"{state.get('name')} likes {color.get('color')}."
        question = _elicitation("Step 1: What is your name?", "name", "string")
        return _ask(ctx, {"step1": question}, json.dumps({"round": 1}))

    @server.tool(description="Ask for a confirmation; the SDK rejects a retry whose requestState was altered.")
    def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
        if ctx.request_state is not None and _accepted(ctx, "confirm") is not None:
            return f"state-ok: {ctx.request_state}"
        return _ask(ctx, {"confirm": _elicitation("Please confirm", "ok", "boolean")}, "round-1")


def _add_resources(server: MCPServer) -> None:
    """Static text and binary resources and a URI template (resources-* scenarios)."""

    @server.resource("test://static-text", name="static-text", description="A static text resource.")
    def static_text() -> str:
        return "This is the content of the static text resource."

    @server.resource("test://static-binary", name="static-binary", description="A 1x1 PNG.", mime_type="image/png")
    def static_binary() -> bytes:
        return base64.b64decode(PNG_BASE64)

    @server.resource(
        "test://template/{id}/data",
        name="template-data",
        description="JSON data for the given id.",
        mime_type="application/json",
    )
    def template_data(id: str) -> str:
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


def _add_prompts(server: MCPServer) -> None:
    """Prompts with and without arguments, an embedded resource, an image, and one that needs input first."""

    @server.prompt(description="A prompt without arguments.")
    def test_simple_prompt() -> str:
        return "This is a simple prompt for testing."

    @server.prompt(description="A prompt with two required arguments.")
    def test_prompt_with_arguments(arg1: str, arg2: str) -> str:
        return f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"

    @server.prompt(description="A prompt embedding the resource named by resourceUri.")
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[Message]:
        resource = TextResourceContents(
            uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
        )
        return [
            UserMessage(content=EmbeddedResource(type="resource", resource=resource)),
            UserMessage(content=TextContent(type="text", text="Please process the embedded resource above.")),
        ]

    @server.prompt(description="A prompt carrying a PNG image.")
    def test_prompt_with_image() -> list[Message]:
        return [
            UserMessage(content=ImageContent(type="image", data=PNG_BASE64, mime_type="image/png")),
            UserMessage(content=TextContent(type="text", text="Please analyze the image above.")),
        ]

    @server.prompt(description="Ask the user for context (2026-07-28 input required), then build the prompt.")
    def test_input_required_result_prompt(ctx: Context) -> list[Message] | InputRequiredResult:
        answer = _accepted(ctx, "user_context")
        if answer is None:
            return _ask(ctx, {"user_context": _elicitation("What context should the prompt use?", "context", "string")})
        return [UserMessage(content=TextContent(type="text", text=f"Use the following context: {answer['context']}"))]


def _add_completions(server: MCPServer) -> None:
    """Completions for the prompt arguments and the template variable (completion-complete scenario)."""

    @server.completion()  # type: ignore[no-untyped-call, untyped-decorator]  # unannotated in the SDK
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion:
        values = [value for value in COMPLETIONS.get(argument.name, []) if value.startswith(argument.value)]
        return Completion(values=values, total=len(values), has_more=False)


def _add_handshake_era_methods(server: MCPServer) -> None:
    """`logging/setLevel` and `resources/subscribe`/`unsubscribe`, which only the 2025 era has (the SDK answers them
    404 at 2026-07-28). `MCPServer` has no public registration for them, hence its low-level server."""

    async def set_level(ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams) -> EmptyResult:
        # Acknowledged only: in the 2025 era the SDK sends every level and leaves filtering to the application.
        return EmptyResult()

    async def subscribe(ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        # Acknowledged: these resources never change, so no notifications/resources/updated ever follows.
        return EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        return EmptyResult()

    lowlevel = server._lowlevel_server
    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)


# --modern-only (see the module docstring).


def _handshake_era_version(method: Any, params: Any, version: str | None) -> str | None:
    """The 2025-era version a request asks for, or None when it is for 2026-07-28 (or an unknown version).

    `version` is what the transport knows: the HTTP header, or the stdio connection's version. Absent, the spec
    assumes 2025-03-26. An `initialize` names the version it proposes.
    """
    era = version or DEFAULT_NEGOTIATED_VERSION
    if era not in HANDSHAKE_PROTOCOL_VERSIONS:
        return None
    proposed = params.get("protocolVersion") if method == "initialize" and isinstance(params, Mapping) else None
    return proposed if isinstance(proposed, str) else era


def _unsupported_version(requested: str) -> ErrorData:
    data = UnsupportedProtocolVersionErrorData(supported=list(MODERN_PROTOCOL_VERSIONS), requested=requested)
    return ErrorData(
        code=UNSUPPORTED_PROTOCOL_VERSION,
        message="This server serves only the 2026-07-28 protocol",
        data=data.model_dump(mode="json"),
    )


async def _refuse_handshake_era(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """stdio: refuse every request on a 2025-era connection, `initialize` first."""
    requested = _handshake_era_version(ctx.method, ctx.params, ctx.protocol_version)
    if requested is None:
        return await call_next(ctx)
    if ctx.request_id is None:  # a 2025 notification, e.g. notifications/initialized: nothing to answer
        return None
    raise MCPError.from_error_data(_unsupported_version(requested))


class RefuseHandshakeEraHTTP:
    """HTTP: answer 2025-era POSTs to the MCP endpoint with status 400 and -32022; pass everything else on."""

    def __init__(self, app: ASGIApp, path: str = "/mcp") -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        try:
            message = json.loads(body)
        except ValueError:  # not JSON: the SDK answers that
            await self.app(scope, _replay(body, receive), send)
            return
        request = message if isinstance(message, dict) else {}  # a batch is 2025-only: refused on its header
        header = Headers(scope=scope).get(MCP_PROTOCOL_VERSION_HEADER)
        requested = _handshake_era_version(request.get("method"), request.get("params"), header)
        if requested is None:
            await self.app(scope, _replay(body, receive), send)
            return
        error = _unsupported_version(requested).model_dump(mode="json", exclude_none=True)
        response = JSONResponse({"jsonrpc": "2.0", "id": request.get("id"), "error": error}, status_code=400)
        await response(scope, receive, send)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` handing the already-read body to the wrapped app, then deferring to the real one."""
    pending = True

    async def replayed() -> ASGIMessage:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transport", choices=["http", "stdio"], required=True)
    parser.add_argument("--host", default="127.0.0.1", help="HTTP only")
    parser.add_argument("--port", type=int, help="HTTP only, and required there; 0 picks a free port")
    parser.add_argument("--modern-only", action="store_true", help="serve 2026-07-28 only; refuse 2025 with -32022")
    args = parser.parse_args(argv)

    server = create_server()
    if args.transport == "stdio":
        if args.modern_only:
            server.middleware.append(_refuse_handshake_era)
        server.run("stdio")
        return
    if args.port is None:
        parser.error("--transport http needs --port")
    app: ASGIApp = server.streamable_http_app(host=args.host)
    if args.modern_only:
        app = RefuseHandshakeEraHTTP(app)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
    )
    ReadyServer(config).run()
    sys.exit(0)


if __name__ == "__main__":
    main()
