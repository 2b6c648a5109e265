// Runs Rocket.Chat's own validator for POST voip/room.close over request
// bodies read as JSON lines {name, contentType, bodyBase64} from stdin and
// prints one JSON line per body: {name, valid, message, rid, token, comment,
// tags, ridWellFormed, tokenWellFormed, successBody}.
//
// Body parsing before validation follows the contract (Rocket.Chat's router):
// JSON when the content type contains "application/json" (decoded as UTF-8
// with replacement, one BOM dropped; unparsable JSON becomes {}); forms as
// URLSearchParams (last repeated key wins); anything else {}.
import { createInterface } from 'node:readline';
import { isVoipRoomCloseProps } from '@rocket.chat/rest-typings/dist/v1/voip.js';

function decode(contentType, buf) {
  const text = new TextDecoder('utf-8').decode(buf);
  if (contentType.includes('application/json')) {
    try {
      return JSON.parse(text);
    } catch {
      return {};
    }
  }
  if (contentType.includes('application/x-www-form-urlencoded')) {
    return Object.fromEntries(new URLSearchParams(text));
  }
  return {};
}

const wellFormed = (s) => typeof s !== 'string' || s.isWellFormed();
const fix = (s) => (typeof s === 'string' ? s.toWellFormed() : s);

for await (const line of createInterface({ input: process.stdin })) {
  if (!line) continue;
  const c = JSON.parse(line);
  const data = decode(c.contentType, Buffer.from(c.bodyBase64, 'base64'));
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
