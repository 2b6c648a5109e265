// Calls voip/room.close through Rocket.Chat's own REST client
// (@rocket.chat/api-client) and prints what the client surfaces, as one JSON
// line per call: {name, ok, result} on success, {name, ok:false, status, body}
// when the client rejects with the Response (as it does for every non-2xx).
//
// Input (argv[2]): JSON {baseUrl, calls: [{name, userId, authToken, params}]}.
// With argv[2] === "hash", prints Rocket.Chat's hashLoginToken of argv[3].
import { createHash } from 'node:crypto';
import { RestClient } from '@rocket.chat/api-client';

if (process.argv[2] === 'hash') {
  // Rocket.Chat's Accounts._hashLoginToken.
  process.stdout.write(createHash('sha256').update(process.argv[3]).digest('base64') + '\n');
  process.exit(0);
}

const { baseUrl, calls } = JSON.parse(process.argv[2]);
for (const call of calls) {
  const client = new RestClient({
    baseUrl,
    credentials: { 'X-User-Id': call.userId, 'X-Auth-Token': call.authToken },
  });
  try {
    const result = await client.post('/v1/voip/room.close', call.params);
    process.stdout.write(JSON.stringify({ name: call.name, ok: true, result }) + '\n');
  } catch (err) {
    if (err instanceof Response) {
      process.stdout.write(JSON.stringify({ name: call.name, ok: false, status: err.status, body: await err.text() }) + '\n');
    } else {
      process.stdout.write(JSON.stringify({ name: call.name, ok: false, error: String(err) }) + '\n');
    }
  }
}
