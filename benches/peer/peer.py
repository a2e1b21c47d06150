"""The peer casewarden's pass is measured against: a hand-written asyncio + aiohttp client
making the same decisions as the rules in ./rules (no audit log, no safety checks).

One keep-alive session; the first page tells the total, the other pages are then fetched
concurrently; updates go out as pages are evaluated, 8 requests in flight.

    python peer.py URL USER API_KEY   -> prints {"cases": N, "updates": U, "changes": C}
"""

import asyncio
import base64
import ipaddress
import json
import sys
import time

import aiohttp

PAGE = 500
IN_FLIGHT = 8
HOUR = 3_600_000
RANK = {"Low": 0, "Medium": 1, "High": 2, "Critical": 3}
BOB = "d55430ab03bc6df2ed1aa367e640abcc"


def entity_ip(case):
    parts = [p.strip() for p in (case.get("metadata") or {}).get("entity_id", "").split(",")]
    if len(parts) < 3 or not parts[0]:
        return None
    try:
        ipaddress.ip_address(parts[-1])
    except ValueError:
        return None
    return parts[-1]


def decide(case, now):
    """The update body the five bench rules ask for, or None."""
    body, add = {}, []
    status, priority, tags = case.get("status"), case.get("priority"), case.get("tags") or []
    if status == "New" and RANK.get(priority, -1) < RANK["High"]:
        if (now - case["created_at"]) // HOUR >= 24:
            body["priority"] = "High"
    if status == "New":
        ip = entity_ip(case)
        if ip and ip.startswith("10.10.") and "dmz" not in tags:
            add.append("dmz")
    if status in ("New", "In Progress", "Escalated") and not case.get("assignee"):
        if "phishing" in tags:
            body["assignee"] = BOB
    if status == "New" and priority == "Critical":
        if not case.get("acknowledged") and "sla-breach" not in tags:
            add.append("sla-breach")
    if status == "In Progress" and priority == "Low":
        score = case.get("case_score")
        if score is not None and score < 20 and (now - case["modified_at"]) // (24 * HOUR) >= 30:
            body["status"] = "Resolved"
    if add:
        body["tags"] = {"add": add, "delete": []}
    return body or None


async def main(url, user, key):
    counts = {"cases": 0, "updates": 0, "changes": 0}
    limit = asyncio.Semaphore(IN_FLIGHT)
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector) as http:
        basic = "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()
        async with http.post(
            f"{url}/connect/api/v1/access_token", headers={"Authorization": basic}
        ) as r:
            r.raise_for_status()
            token = (await r.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        updates = []

        async def update(case_id, body):
            async with limit:
                async with http.post(
                    f"{url}/connect/api/v1/cases", params={"id": case_id}, json=body, headers=headers
                ) as r:
                    r.raise_for_status()
                    await r.read()

        async def page(skip):
            async with limit:
                async with http.get(
                    f"{url}/connect/api/v1/cases",
                    params={"limit": PAGE, "skip": skip},
                    headers=headers,
                ) as r:
                    r.raise_for_status()
                    data = (await r.json())["data"]
            now = int(time.time() * 1000)
            for case in data["cases"]:
                counts["cases"] += 1
                body = decide(case, now)
                if body:
                    counts["updates"] += 1
                    counts["changes"] += len(body) - ("tags" in body)
                    counts["changes"] += len(body.get("tags", {}).get("add", []))
                    updates.append(asyncio.ensure_future(update(case["_id"], body)))
            return data["total"]

        total = await page(0)
        await asyncio.gather(*(page(skip) for skip in range(PAGE, total, PAGE)))
        await asyncio.gather(*updates)
    print(json.dumps(counts))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
