// Package luatest runs the FillProbRollout health check and resource actions the way Argo CD
// runs a resource customization from argocd-cm (util/lua/lua.go in argoproj/argo-cd, read at
// v3.5.1 / master of 2026-08; written anew here, not copied):
//
//   - gopher-lua at the version Argo CD's go.mod pins (v1.1.2 since v3.5; v1.1.1 before), with
//     lua.Options{SkipOpenLibs: !useOpenLibs}. A customization from argocd-cm has useOpenLibs
//     false unless resource.customizations.useOpenLibs.<group_kind> is "true".
//   - then, always: package, base and table (lua.OpenPackage, OpenBase, OpenTable), and a "safe"
//     os with only time and date. Argo CD opens that one by RegisterModule under the *table*
//     library's name, which is already loaded, so no global `os` appears: only
//     `require("os")` (package.preload) reaches it. string, math, io, os, debug, coroutine,
//     channel stay closed.
//   - a 1 s context deadline; the global `actionParams` (an empty table unless parameters are
//     given) and the global `obj`: the live object as unstructured JSON (integers int64, others
//     float64) turned into Lua tables (numbers -> LNumber, json.Number -> string).
//   - the script's last return value encoded with layeh.com/gopher-json and decoded into the
//     Go shapes Argo CD uses: a health {status, message} (an invalid status becomes Unknown,
//     "Lua returned an invalid health status"); a discovery map name -> {disabled, ...} ("[]":
//     none); an action's object (old style) or list of {resource, operation} (new style).
//   - an action's object has empty tables that were JSON objects in the live object put back as
//     objects, then the server merge-patches the live object with CreateMergePatch(live, new)
//     (github.com/evanphx/json-patch, server/application/application.go patchResource).
package luatest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	jsonpatch "github.com/evanphx/json-patch"
	lua "github.com/yuin/gopher-lua"
	luajson "layeh.com/gopher-json"
	"sigs.k8s.io/yaml"
)

// Health is gitops-engine's health.HealthStatus as Argo CD reads it from the script.
type Health struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
}

// Action is appv1.ResourceAction as discovery returns it.
type Action struct {
	Name        string `json:"name,omitempty"`
	Disabled    bool   `json:"disabled,omitempty"`
	IconClass   string `json:"iconClass,omitempty"`
	DisplayName string `json:"displayName,omitempty"`
}

// ResourceActions is the value of resource.customizations.actions.<group_kind> (appv1.ResourceActions).
type ResourceActions struct {
	DiscoveryLua string `json:"discovery.lua,omitempty"`
	Definitions  []struct {
		Name      string `json:"name"`
		ActionLua string `json:"action.lua"`
	} `json:"definitions,omitempty"`
	MergeBuiltinActions bool `json:"mergeBuiltinActions,omitempty"`
}

// Override is what Argo CD's settings manager builds for one group/kind from argocd-cm's
// resource.customizations.<type>.<group_kind> keys.
type Override struct {
	HealthLua   string
	UseOpenLibs bool
	Actions     ResourceActions
}

var validHealth = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

// LoadOverride reads the argocd-cm ConfigMap (or merge patch) at path and returns the override for
// groupKind ("grinder.io_FillProbRollout"), as util/settings does for split keys.
func LoadOverride(path, groupKind string) (Override, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Override{}, err
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(raw, &cm); err != nil {
		return Override{}, fmt.Errorf("%s: %w", path, err)
	}
	var o Override
	for key, value := range cm.Data {
		parts := strings.SplitN(key, ".", 4)
		if len(parts) < 4 || parts[0]+"."+parts[1] != "resource.customizations" || parts[3] != groupKind {
			continue
		}
		switch parts[2] {
		case "health":
			o.HealthLua = value
		case "useOpenLibs":
			o.UseOpenLibs = value == "true"
		case "actions":
			if err := yaml.Unmarshal([]byte(value), &o.Actions); err != nil {
				return Override{}, fmt.Errorf("%s: %s: %w", path, key, err)
			}
		default:
			return Override{}, fmt.Errorf("%s: resource customization type %s not supported", path, parts[2])
		}
	}
	return o, nil
}

// ActionLua returns the definition named name, as GetResourceAction does for an override.
func (o Override) ActionLua(name string) (string, bool) {
	for _, d := range o.Actions.Definitions {
		if d.Name == name {
			return d.ActionLua, true
		}
	}
	return "", false
}

// Unstructured decodes JSON the way the Kubernetes unstructured decoder does: integers become
// int64, other numbers float64.
func Unstructured(data []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v map[string]any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	out, err := numbers(v)
	if err != nil {
		return nil, err
	}
	return out.(map[string]any), nil
}

func numbers(v any) (any, error) {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i, nil
		}
		return x.Float64()
	case map[string]any:
		for k, item := range x {
			n, err := numbers(item)
			if err != nil {
				return nil, err
			}
			x[k] = n
		}
	case []any:
		for i, item := range x {
			n, err := numbers(item)
			if err != nil {
				return nil, err
			}
			x[i] = n
		}
	}
	return v, nil
}

// toLua turns an unstructured value into Lua values (Argo CD's decodeValue behaviour).
func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(string(v))
	case float64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case int32:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case []any:
		t := l.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]any:
		t := l.CreateTable(0, len(v))
		for k, item := range v {
			t.RawSetH(lua.LString(k), toLua(l, item))
		}
		return t
	}
	return lua.LNil
}

// safeOs is Argo CD's restricted os: time and date only (own minimal implementations; the
// scripts here use neither, the point is which names exist).
var safeOs = map[string]lua.LGFunction{
	"time": func(l *lua.LState) int {
		l.Push(lua.LNumber(time.Now().Unix()))
		return 1
	},
	"date": func(l *lua.LState) int {
		l.Push(lua.LString(time.Now().UTC().Format(time.RFC3339)))
		return 1
	},
}

// Run executes script with obj bound, with Argo CD's library set, and returns its result as
// the JSON gopher-json encodes (what Argo CD unmarshals), or "" for nil.
func Run(obj map[string]any, script string, useOpenLibs bool) ([]byte, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: !useOpenLibs})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		// Argo CD opens its safe os under the table library's name: a no-op, since "table"
		// is loaded already (gopher-lua's RegisterModule returns the existing module).
		{lua.OsLibName, func(l *lua.LState) int {
			l.Push(l.RegisterModule(lua.TabLibName, safeOs))
			return 1
		}},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return nil, err
		}
	}
	l.PreloadModule(lua.OsLibName, func(l *lua.LState) int {
		l.Push(l.SetFuncs(l.NewTable(), safeOs))
		return 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("actionParams", l.CreateTable(0, 0))
	l.SetGlobal("obj", toLua(l, obj))
	fn, err := l.LoadString(script)
	if err != nil {
		return nil, err
	}
	l.Push(fn)
	if err := l.PCall(0, lua.MultRet, nil); err != nil {
		return nil, err
	}
	ret := l.Get(-1)
	switch ret.Type() {
	case lua.LTNil:
		return nil, nil
	case lua.LTTable:
		return luajson.Encode(ret)
	}
	return nil, fmt.Errorf("expect table output from Lua script, not %s", ret.Type())
}

// ExecuteHealth is ExecuteHealthLua.
func ExecuteHealth(obj map[string]any, script string, useOpenLibs bool) (Health, error) {
	out, err := Run(obj, script, useOpenLibs)
	if err != nil || out == nil {
		return Health{}, err
	}
	var h Health
	if err := json.Unmarshal(out, &h); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && string(out) == "[]" { // an empty table
			return Health{}, nil
		}
		return Health{}, err
	}
	if !validHealth[h.Status] {
		return Health{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return h, nil
}

// Discover is ExecuteResourceActionDiscovery for one script: name -> action.
func Discover(obj map[string]any, script string, useOpenLibs bool) (map[string]Action, error) {
	out, err := Run(obj, script, useOpenLibs)
	if err != nil {
		return nil, err
	}
	if out == nil {
		return nil, errors.New("expect table output from Lua script, not nil")
	}
	actions := map[string]Action{}
	if string(out) == "[]" {
		return actions, nil
	}
	var raw map[string]any
	if err := json.Unmarshal(out, &raw); err != nil {
		return nil, fmt.Errorf("error unmarshaling action table: %w", err)
	}
	for name, value := range raw {
		a := Action{Name: name}
		if m, ok := value.(map[string]any); ok {
			b, _ := json.Marshal(m)
			if err := json.Unmarshal(b, &a); err != nil {
				return nil, err
			}
			a.Name = name
			if d, ok := m["disabled"].(bool); ok {
				a.Disabled = d
			}
		}
		actions[name] = a
	}
	return actions, nil
}

// ExecuteAction is ExecuteResourceAction followed by the server's patch computation for an
// old-style (object) result: it returns the JSON merge patch Argo CD sends to the API server
// ("{}": nothing is sent). New-style (list) results are refused: these actions return obj.
func ExecuteAction(live map[string]any, script string, useOpenLibs bool) ([]byte, error) {
	liveJSON, err := json.Marshal(live)
	if err != nil {
		return nil, err
	}
	// The script gets its own copy: Run must not see changes made to `live`.
	copyOfLive, err := Unstructured(liveJSON)
	if err != nil {
		return nil, err
	}
	out, err := Run(copyOfLive, script, useOpenLibs)
	if err != nil {
		return nil, err
	}
	if len(out) < 2 {
		return nil, errors.New("Lua output was not a valid json object or array")
	}
	if out[0] == '[' {
		return nil, fmt.Errorf("new-style (list) action output, not expected here: %s", out)
	}
	var newObj map[string]any
	if err := json.Unmarshal(out, &newObj); err != nil {
		return nil, err
	}
	restoreEmptyObjects(newObj, live)
	newJSON, err := json.Marshal(newObj)
	if err != nil {
		return nil, err
	}
	return jsonpatch.CreateMergePatch(liveJSON, newJSON)
}

// restoreEmptyObjects: Lua cannot tell an empty object from an empty array and gopher-json
// encodes both as []; where the live object had an object, an empty [] becomes {} again
// (Argo CD's cleanReturnedObj / cleanReturnedArray).
func restoreEmptyObjects(newObj, old map[string]any) {
	for key, oldValue := range old {
		newValue, ok := newObj[key]
		if !ok {
			continue
		}
		switch nv := newValue.(type) {
		case map[string]any:
			if ov, ok := oldValue.(map[string]any); ok {
				restoreEmptyObjects(nv, ov)
			}
		case []any:
			switch ov := oldValue.(type) {
			case map[string]any:
				if len(nv) == 0 {
					newObj[key] = map[string]any{}
				}
			case []any:
				restoreEmptyInArray(nv, ov)
			}
		}
	}
}

func restoreEmptyInArray(newArr, old []any) {
	for i := range newArr {
		if i >= len(old) {
			break
		}
		switch nv := newArr[i].(type) {
		case map[string]any:
			if ov, ok := old[i].(map[string]any); ok {
				restoreEmptyObjects(nv, ov)
			}
		case []any:
			if ov, ok := old[i].([]any); ok {
				restoreEmptyInArray(nv, ov)
			}
		}
	}
}
