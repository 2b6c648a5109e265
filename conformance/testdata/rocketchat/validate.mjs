// Runs Rocket.Chat's own validator for POST voip/room.close over request
// bodies read as JSON lines {name, contentType, bodyBase64} from stdin and
// prints one JSON line per body: {name, valid, message, rid, token, comment,
// tags, ridWellFormed, tokenWellFormed, successBody}.
//
// Body parsing before validation is Rocket.Chat's router's own
// (packages/http-router/src/Router.ts, parseBodyParams), performed on a real
// WHATWG Request rather than re-read from our contract: multipart → {};
// application/json → request.json(); urlencoded → the entries of
// request.formData(); anything else → request.text(); '' → {}; an array as
// it is; any other value spread into a new object; any exception → {}.
import { createInterface } from 'node:readline';
import { isVoipRoomCloseProps } from '@rocket.chat/rest-typings/dist/v1/voip.js';

async function parseBodyParams(request) {
  try {
    const contentType = request.headers.get('content-type');
    let parsed;
    if (contentType?.includes('multipart/form-data')) {
      return {};
    } else if (contentType?.includes('application/json')) {
      parsed = await request.clone().json();
    } else if (contentType?.includes('application/x-www-form-urlencoded')) {
      parsed = Object.fromEntries((await request.clone().formData()).entries());
    } else {
      parsed = await request.clone().text();
    }
    if (parsed === '') {
      return {};
    }
    if (Array.isArray(parsed)) {
      return parsed;
    }
    return { ...parsed };
  } catch {
    return {};
  }
}

function toRequest(contentType, buf) {
  const headers = new Headers();
  if (contentType !== '') headers.set('content-type', contentType);
  return new Request('http://gateway.test/api/v1/voip/room.close', { method: 'POST', headers, body: buf });
}

const wellFormed = (s) => typeof s !== 'string' || s.isWellFormed();
const fix = (s) => (typeof s === 'string' ? s.toWellFormed() : s);

for await (const line of createInterface({ input: process.stdin })) {
  if (!line) continue;
  const c = JSON.parse(line);
  const data = await parseBodyParams(toRequest(c.contentType, Buffer.from(c.bodyBase64, 'base64')));
  const valid = isVoipRoomCloseProps(data);
  const out = { name: c.name, valid };
  if (valid) {
    out.rid = fix(data.rid);
    out.token = fix(data.token);
    out.ridWellFormed = wellFormed(data.rid);
    out.tokenWellFormed = wellFormed(data.token);
    out.comment = data.options?.comment ?? null;
    out.comment = out.comment === null ? null : fix(out.comment);
    out.tags = Array.isArray(data.options?.tags) ? data.options.tags.map(fix) : null;
    out.successBody = JSON.stringify({ rid: data.rid, success: true });
  } else {
    out.message = isVoipRoomCloseProps.errors[0].message;
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}
