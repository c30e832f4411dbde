// Interop of a Chorus node's Bitswap with Helia (the JS IPFS implementation, its own libp2p,
// its own Bitswap): nothing here is Chorus code.
//
// usage: node bitswap.mjs CHORUS_MULTIADDR HEAD_CID...
//
// 1. Dials the Chorus node (TCP + Noise + Yamux, identify), then walks the timeline's DAG from
//    the heads, fetching every block by CID through Helia's blockstore (which asks over
//    Bitswap: the blockstore starts empty, and no other broker or router is configured). Each
//    block must recompute to its CID (sha2-256 of its bytes), decode as DAG-CBOR, and every CID
//    it links to must be fetched too (a closed DAG). Prints one JSON line:
//    {"walk":{"ok":true,"blocks":N,"links":L,"bitswap":{...}}}.
// 2. Puts a raw block of random bytes into its own blockstore (only this process holds it) and
//    prints {"holding":{"cid":"…","hex":"…"}}; the test then fetches it through the Chorus node.
// 3. Stays connected until its stdin closes, then prints {"done":{…}} and exits.
// Any failure prints {"error":"…"} and exits 1.
import { randomBytes } from 'node:crypto'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { withBitswap } from '@helia/bitswap'
import { withLibp2pLight } from '@helia/libp2p'
import * as dagCbor from '@ipld/dag-cbor'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { MemoryBlockstore } from 'blockstore-core'
import { MemoryDatastore } from 'datastore-core'
import { createHeliaLight } from 'helia'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'

const say = (o) => console.log(JSON.stringify(o))
const fail = (msg) => { say({ error: String(msg) }); process.exit(1) }
process.on('unhandledRejection', (e) => fail(e?.stack ?? e))

const [addr, ...heads] = process.argv.slice(2)
if (!addr || heads.length === 0) fail('usage: node bitswap.mjs CHORUS_MULTIADDR HEAD_CID...')

const helia = withBitswap(withLibp2pLight(createHeliaLight({
  blockstore: new MemoryBlockstore(),
  datastore: new MemoryDatastore()
}), {
  addresses: { listen: [] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify() }
}))
await helia.start()
const chorus = multiaddr(addr)
await helia.libp2p.dial(chorus)

// Every CID anywhere in a decoded DAG-CBOR value.
function linksOf (value, out = []) {
  const cid = CID.asCID(value)
  if (cid) out.push(cid)
  else if (Array.isArray(value)) for (const v of value) linksOf(v, out)
  else if (value && typeof value === 'object' && !(value instanceof Uint8Array)) {
    for (const v of Object.values(value)) linksOf(v, out)
  }
  return out
}

async function getBlock (cid) {
  const got = helia.blockstore.get(cid, { signal: AbortSignal.timeout(30_000) })
  // The blockstore interface yields a block in chunks in newer releases, whole in older ones.
  if (got instanceof Uint8Array || typeof got?.then === 'function') return await got
  const parts = []
  for await (const p of got) parts.push(p)
  return Buffer.concat(parts)
}

const queue = heads.map((h) => CID.parse(h))
const seen = new Set(queue.map((c) => c.toString()))
let blocks = 0
let links = 0
while (queue.length) {
  const cid = queue.shift()
  const bytes = await getBlock(cid)
  const digest = await sha256.digest(bytes)
  if (cid.multihash.code !== sha256.code) fail(`${cid} is not a sha2-256 CID`)
  if (!CID.createV1(cid.code, digest).equals(cid)) fail(`block ${cid} does not hash to its CID`)
  if (cid.code !== dagCbor.code) fail(`${cid} is not DAG-CBOR`)
  blocks++
  for (const next of linksOf(dagCbor.decode(bytes))) {
    links++
    if (!seen.has(next.toString())) {
      seen.add(next.toString())
      queue.push(next)
    }
  }
}
const peers = helia.libp2p.getPeers().map(String)
say({ walk: { ok: true, blocks, links, connected: peers } })

const data = randomBytes(4096)
const mine = CID.createV1(raw.code, await sha256.digest(data))
await helia.blockstore.put(mine, data)
say({ holding: { cid: mine.toString(), hex: data.toString('hex') } })

process.stdin.resume()
await new Promise((resolve) => process.stdin.on('end', resolve))
say({ done: { connected: helia.libp2p.getPeers().map(String) } })
await helia.stop()
process.exit(0)
