package luatest

// The scripts are read from argocd-cm-patch.yaml, the ConfigMap patch people apply, so what is
// tested is what Argo CD gets; tests/unit/test_argocd_health.py checks that file is rendered from
// health.lua and actions/. Cases are in testdata/*.json.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
)

const (
	cmPatch   = "../argocd-cm-patch.yaml"
	groupKind = "grinder.io_FillProbRollout"
)

var actionNames = []string{"suspend", "resume", "rollback-r1", "rollback-r2", "rollback-r3"}

func override(t *testing.T) Override {
	t.Helper()
	o, err := LoadOverride(cmPatch, groupKind)
	if err != nil {
		t.Fatal(err)
	}
	if o.HealthLua == "" || o.Actions.DiscoveryLua == "" {
		t.Fatalf("%s: no health or actions for %s", cmPatch, groupKind)
	}
	if o.UseOpenLibs {
		t.Fatalf("%s sets useOpenLibs: the scripts must run without it", cmPatch)
	}
	return o
}

// load reads testdata/<name>.json; each case's "obj" goes through JSON like a live object.
func load[T any](t *testing.T, name string) []T {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var cases []T
	if err := json.Unmarshal(raw, &cases); err != nil {
		t.Fatalf("testdata/%s: %v", name, err)
	}
	if len(cases) == 0 {
		t.Fatalf("testdata/%s: no cases", name)
	}
	return cases
}

func live(t *testing.T, obj json.RawMessage) map[string]any {
	t.Helper()
	m, err := Unstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// The VM offers what Argo CD's does, and nothing more: the reason the checks must not use string.*.
func TestVMHasArgoCDLibrariesOnly(t *testing.T) {
	script := `
local r = {}
r.string = type(string)
r.math = type(math)
r.os = type(os)
r.io = type(io)
r.debug = type(debug)
r.coroutine = type(coroutine)
r.table = type(table)
r.insert = type(table.insert)
r.pairs = type(pairs)
r.tostring = type(tostring)
r.require = type(require)
r.requireOs = type(require("os").time)
r.method = tostring(pcall(function() return ("x"):upper() end))
return r
`
	out, err := Run(map[string]any{}, script, false)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"string": "nil", "math": "nil", "os": "nil", "io": "nil", "debug": "nil", "coroutine": "nil",
		"table": "table", "insert": "function", "pairs": "function", "tostring": "function",
		"require": "function", "requireOs": "function", "method": "false",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("library set\n got %v\nwant %v", got, want)
	}
}

// The failure the issue reports: the old check's string.match, in Argo CD's VM.
func TestStringLibraryIsAnErrorAsInArgoCD(t *testing.T) {
	_, err := ExecuteHealth(map[string]any{"status": map[string]any{"step": "Expand 3/3"}},
		`local k = string.match(obj.status.step, "(%d+)") return {status = "Healthy"}`, false)
	if err == nil || !strings.Contains(err.Error(), "attempt to index a non-table object(nil) with key 'match'") {
		t.Fatalf("want Argo CD's error for string.match, got %v", err)
	}
	if _, err := ExecuteHealth(map[string]any{}, `return {status = string.upper("healthy")}`, true); err != nil {
		t.Fatalf("with useOpenLibs the string library is there: %v", err)
	}
}

type healthCase struct {
	Name            string          `json:"name"`
	Obj             json.RawMessage `json:"obj"`
	Status          string          `json:"status"`
	Message         *string         `json:"message"`
	MessageContains []string        `json:"messageContains"`
}

func TestHealth(t *testing.T) {
	o := override(t)
	seen := map[string]bool{}
	for _, c := range load[healthCase](t, "health.json") {
		t.Run(c.Name, func(t *testing.T) {
			got, err := ExecuteHealth(live(t, c.Obj), o.HealthLua, o.UseOpenLibs)
			if err != nil {
				t.Fatalf("Argo CD would show the error: %v", err)
			}
			if got.Status != c.Status {
				t.Fatalf("status %q (%s), want %q", got.Status, got.Message, c.Status)
			}
			if got.Message == "" {
				t.Fatal("empty message")
			}
			if c.Message != nil && got.Message != *c.Message {
				t.Fatalf("message\n got %q\nwant %q", got.Message, *c.Message)
			}
			for _, part := range c.MessageContains {
				if !strings.Contains(got.Message, part) {
					t.Fatalf("message %q lacks %q", got.Message, part)
				}
			}
			seen[got.Status] = true
		})
	}
	for _, s := range []string{"Healthy", "Progressing", "Degraded", "Suspended"} {
		if !seen[s] {
			t.Errorf("no case gives %s", s)
		}
	}
}

type discoveryCase struct {
	Name    string          `json:"name"`
	Obj     json.RawMessage `json:"obj"`
	Enabled []string        `json:"enabled"`
}

func TestDiscovery(t *testing.T) {
	o := override(t)
	for _, c := range load[discoveryCase](t, "discovery.json") {
		t.Run(c.Name, func(t *testing.T) {
			got, err := Discover(live(t, c.Obj), o.Actions.DiscoveryLua, o.UseOpenLibs)
			if err != nil {
				t.Fatal(err)
			}
			var names, enabled []string
			for name, a := range got {
				names = append(names, name)
				if !a.Disabled {
					enabled = append(enabled, name)
				}
			}
			sort.Strings(names)
			want := slices.Clone(actionNames)
			sort.Strings(want)
			if !reflect.DeepEqual(names, want) {
				t.Fatalf("actions %v, want %v", names, want)
			}
			sort.Strings(enabled)
			wantEnabled := slices.Clone(c.Enabled)
			sort.Strings(wantEnabled)
			if !reflect.DeepEqual(enabled, wantEnabled) {
				t.Fatalf("enabled %v, want %v", enabled, wantEnabled)
			}
		})
	}
}

// Every discovered action has a definition, and every definition is discovered.
func TestEveryActionIsDefined(t *testing.T) {
	o := override(t)
	var defined []string
	for _, d := range o.Actions.Definitions {
		defined = append(defined, d.Name)
	}
	if !reflect.DeepEqual(defined, actionNames) {
		t.Fatalf("definitions %v, want %v", defined, actionNames)
	}
}

type actionCase struct {
	Action string          `json:"action"`
	Name   string          `json:"name"`
	Obj    json.RawMessage `json:"obj"`
	Patch  json.RawMessage `json:"patch"`
}

func TestActions(t *testing.T) {
	o := override(t)
	tested := map[string]bool{}
	for _, c := range load[actionCase](t, "actions.json") {
		t.Run(c.Action+"/"+c.Name, func(t *testing.T) {
			script, ok := o.ActionLua(c.Action)
			if !ok {
				t.Fatalf("no definition for %s", c.Action)
			}
			patch, err := ExecuteAction(live(t, c.Obj), script, o.UseOpenLibs)
			if err != nil {
				t.Fatal(err)
			}
			var got, want any
			if err := json.Unmarshal(patch, &got); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(c.Patch, &want); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("merge patch\n got %s\nwant %s", patch, c.Patch)
			}
			tested[c.Action] = true
		})
	}
	for _, name := range actionNames {
		if !tested[name] {
			t.Errorf("no case runs %s", name)
		}
	}
}

// An action never writes status (Argo CD would send it to the status subresource) and leaves
// everything it does not mean to change as it was, for every sample object.
func TestActionsTouchOnlyTheirFields(t *testing.T) {
	o := override(t)
	allowed := map[string][]string{
		"suspend":     {"spec"},
		"resume":      {"spec", "metadata"},
		"rollback-r1": {"metadata"},
		"rollback-r2": {"metadata"},
		"rollback-r3": {"metadata"},
	}
	for _, c := range load[healthCase](t, "health.json") {
		for _, name := range actionNames {
			script, _ := o.ActionLua(name)
			patch, err := ExecuteAction(live(t, c.Obj), script, o.UseOpenLibs)
			if err != nil {
				t.Fatalf("%s on %q: %v", name, c.Name, err)
			}
			var got map[string]any
			if err := json.Unmarshal(patch, &got); err != nil {
				t.Fatal(err)
			}
			for key := range got {
				if !slices.Contains(allowed[name], key) {
					t.Errorf("%s on %q patches %s: %s", name, c.Name, key, patch)
				}
			}
		}
	}
}
