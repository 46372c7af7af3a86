// tilecheck reads a published comma-lab log with Go's own sumdb packages (golang.org/x/mod/sumdb/note
// and sumdb/tlog), never with comma-lab's code. Built in GOPATH mode against Debian's
// golang-golang-x-mod-dev. It prints one line per fact it checked and exits non-zero on the first failure.
//
//	tilecheck DIR VKEY_FILE [OLD_CHECKPOINT]
package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// dirTiles serves tlog's tiles from a C2SP folder: tlog names them tile/8/L/N, C2SP tile/L/N.
type dirTiles struct{ dir string }

func (d dirTiles) Height() int { return 8 }

func c2spPath(t tlog.Tile) string {
	return strings.Replace(t.Path(), "tile/8/", "tile/", 1)
}

func (d dirTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		b, err := os.ReadFile(filepath.Join(d.dir, c2spPath(t)))
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

func (d dirTiles) SaveTiles([]tlog.Tile, [][]byte) {}

// treeTiles: the tiles a tree of size n has. tlog.NewTiles lists every partial width a reader of any
// size might ask for (sumdb publishes them all); C2SP keeps the partial tiles of checkpointed sizes, so
// of each partial tile only the widest, the one of size n, is required here.
func treeTiles(n int64) []tlog.Tile {
	var out []tlog.Tile
	for _, t := range tlog.NewTiles(8, 0, n) {
		if k := len(out) - 1; k >= 0 && out[k].L == t.L && out[k].N == t.N {
			out[k] = t
		} else {
			out = append(out, t)
		}
	}
	return out
}

func fail(f string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAIL: "+f+"\n", a...)
	os.Exit(1)
}

func open(path string, verifiers note.Verifiers) (origin string, tree tlog.Tree) {
	msg, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	n, err := note.Open(msg, verifiers)
	if err != nil {
		fail("note.Open %s: %v", path, err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 {
		fail("checkpoint body too short")
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("size: %v", err)
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != tlog.HashSize {
		fail("root: %v", err)
	}
	var h tlog.Hash
	copy(h[:], raw)
	fmt.Printf("note: %s signed by %s (%d other signature line(s))\n", path, n.Sigs[0].Name, len(n.UnverifiedSigs))
	return lines[0], tlog.Tree{N: size, Hash: h}
}

// entries parses a C2SP entry bundle (big-endian uint16 length-prefixed entries).
func entries(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		if len(b) < 2 {
			fail("bundle: truncated length")
		}
		n := int(b[0])<<8 | int(b[1])
		if len(b) < 2+n {
			fail("bundle: truncated entry")
		}
		out = append(out, b[2:2+n])
		b = b[2+n:]
	}
	return out
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: tilecheck DIR VKEY_FILE [OLD_CHECKPOINT]")
	}
	dir := os.Args[1]
	vk, err := os.ReadFile(os.Args[2])
	if err != nil {
		fail("%v", err)
	}
	v, err := note.NewVerifier(strings.TrimSpace(string(vk)))
	if err != nil {
		fail("NewVerifier: %v", err)
	}
	verifiers := note.VerifierList(v)
	origin, tree := open(filepath.Join(dir, "checkpoint"), verifiers)
	hr := tlog.TileHashReader(tree, dirTiles{dir})
	// every tile the tree has, read through tlog (which authenticates it against the root), equals the file
	for _, t := range treeTiles(tree.N) {
		want, err := tlog.ReadTileData(t, hr)
		if err != nil {
			fail("ReadTileData %s: %v", t.Path(), err)
		}
		got, err := os.ReadFile(filepath.Join(dir, c2spPath(t)))
		if err != nil || !bytes.Equal(got, want) {
			fail("tile %s: not the bytes tlog derives (%v)", c2spPath(t), err)
		}
	}
	fmt.Printf("tiles: %d, the widest of each as tlog.NewTiles lists them for size %d, each authenticated\n", len(treeTiles(tree.N)), tree.N)
	h, err := tlog.TreeHash(tree.N, hr)
	if err != nil || h != tree.Hash {
		fail("TreeHash(%d) = %v, checkpoint says %v (%v)", tree.N, h, tree.Hash, err)
	}
	fmt.Printf("root: TreeHash(%d) is the checkpoint's root\n", tree.N)
	// each entry bundle hashes to its level-0 tile; a few records proven by tlog's inclusion proofs
	for _, t := range treeTiles(tree.N) {
		if t.L != 0 {
			continue
		}
		p := strings.Replace(c2spPath(t), "tile/0/", "tile/entries/", 1)
		b, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			fail("%v", err)
		}
		tile := mustRead(dir, t)
		es := entries(b)
		if len(es) != t.W {
			fail("%s: %d entries, tile width %d", p, len(es), t.W)
		}
		for i, e := range es {
			idx := t.N<<8 + int64(i)
			want, err := tlog.HashFromTile(t, tile, tlog.StoredHashIndex(0, idx))
			if err != nil || tlog.RecordHash(e) != want {
				fail("entry %d: its RecordHash is not level-0 tile's hash (%v)", idx, err)
			}
		}
	}
	for _, idx := range []int64{0, tree.N / 2, tree.N - 1} {
		if tree.N == 0 {
			break
		}
		proof, err := tlog.ProveRecord(tree.N, idx, hr)
		if err != nil {
			fail("ProveRecord %d: %v", idx, err)
		}
		leaf, _ := hr.ReadHashes([]int64{tlog.StoredHashIndex(0, idx)})
		if err := tlog.CheckRecord(proof, tree.N, tree.Hash, idx, leaf[0]); err != nil {
			fail("CheckRecord %d: %v", idx, err)
		}
	}
	fmt.Printf("entries: every bundle hashes to its tile; inclusion of first, middle, last checked\n")
	if len(os.Args) > 3 {
		oldOrigin, old := open(os.Args[3], verifiers)
		if oldOrigin != origin {
			fail("old checkpoint is of %s", oldOrigin)
		}
		proof, err := tlog.ProveTree(tree.N, old.N, hr)
		if err != nil {
			fail("ProveTree: %v", err)
		}
		if err := tlog.CheckTree(proof, tree.N, tree.Hash, old.N, old.Hash); err != nil {
			fail("CheckTree %d -> %d: %v", old.N, tree.N, err)
		}
		fmt.Printf("consistency: %d -> %d checked by tlog.CheckTree\n", old.N, tree.N)
	}
	fmt.Println("OK")
}

func mustRead(dir string, t tlog.Tile) []byte {
	b, err := os.ReadFile(filepath.Join(dir, c2spPath(t)))
	if err != nil {
		fail("%v", err)
	}
	return b
}
