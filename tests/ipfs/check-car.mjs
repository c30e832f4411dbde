// Independent check of a Chorus CAR export with the JS IPFS stack (@ipld/car, @ipld/dag-cbor,
// multiformats): every block's CIDv1 recomputes from its bytes, every block decodes as strict
// DAG-CBOR, the roots are the expected heads, and the DAG is closed (every parent `pa` and
// timeline link `tl` of every block is in the file).
//
// usage: node check-car.mjs FILE.car [EXPECTED_ROOT_CID...]
// prints one JSON line {"ok":true,...} and exits 0, or prints the problem and exits 1.
import fs from 'node:fs'
import { CarReader } from '@ipld/car'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'

const [file, ...expectedRoots] = process.argv.slice(2)
const fail = (msg) => { console.log(JSON.stringify({ ok: false, error: msg })); process.exit(1) }

const reader = await CarReader.fromBytes(fs.readFileSync(file))
const roots = (await reader.getRoots()).map((c) => c.toString())
const present = new Set()
const links = []
let blocks = 0
for await (const { cid, bytes } of reader.blocks()) {
  const digest = await sha256.digest(bytes)
  const recomputed = CID.createV1(dagCbor.code, digest)
  if (!recomputed.equals(cid)) fail(`block ${cid} recomputes to ${recomputed}`)
  const value = dagCbor.decode(bytes)
  for (const p of value.pa ?? []) links.push([cid.toString(), p.toString()])
  if (value.tl) links.push([cid.toString(), value.tl.toString()])
  present.add(cid.toString())
  blocks++
}
for (const r of roots) if (!present.has(r)) fail(`root ${r} is not in the file`)
for (const [from, to] of links) if (!present.has(to)) fail(`${from} links to ${to}, which is missing`)
if (expectedRoots.length) {
  const a = [...roots].sort().join(','), b = [...expectedRoots].sort().join(',')
  if (a !== b) fail(`roots ${a} are not the expected heads ${b}`)
}
console.log(JSON.stringify({ ok: true, blocks, roots, links: links.length }))
