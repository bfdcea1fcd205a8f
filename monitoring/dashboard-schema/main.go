// Command dashboard-schema validates Grafana dashboard JSON against Grafana's dashboard schema as published in
// the Grafana Foundation SDK (Apache-2.0; its Go types are generated from Grafana's dashboard kind and the
// panel and data-source plugin schemas). Grafana itself (AGPL) is not used.
//
// Usage: dashboard-schema FILE... ("-" reads standard input). Exit 0: every file is valid; 1: problems,
// one per line as "PATH: MESSAGE" (with the panel's title); 2: a file could not be read.
//
// Checked: the SDK's strict decoding (unknown fields, wrong JSON types, required fields missing or null) of
// the dashboard, every panel with its plugin's options and fieldConfig.defaults.custom, and every query with
// its data source's query schema; then the schema's constraints (Validate: gridPos w 1..24, x 0..23, h > 0,
// ...). Gaps of the SDK closed here with the SDK's own types: fieldConfig is decoded strictly too (the SDK
// decodes it leniently), a query without its own datasource is checked against the panel's data source, a
// panel type or query type the SDK has no schema for is reported instead of passing unchecked, and Validate
// runs on a lenient decode (after the strict one it sees no panels). Not checked: enum values (the SDK's
// enums are plain strings and ints), PromQL, and anything a schema cannot say (the tests do the rest).
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

const sdkModule = "github.com/grafana/grafana-foundation-sdk/go"

// problem is one violation: where in the document, and what.
type problem struct{ path, msg string }

type checker struct{ problems []problem }

// add records err (a cog.BuildErrors carries one path per violation) under the path prefix.
func (c *checker) add(prefix string, err error) {
	if err == nil {
		return
	}
	var built cog.BuildErrors
	if !errors.As(err, &built) {
		c.problems = append(c.problems, problem{prefix, err.Error()})
		return
	}
	for _, b := range built {
		path := b.Path
		if prefix != "" {
			path = prefix + "." + path
		}
		c.problems = append(c.problems, problem{path, b.Message})
	}
}

// reportedAt tells whether a problem was already recorded at exactly this place.
func (c *checker) reportedAt(path string) bool {
	for _, p := range c.problems {
		if normalise(p.path) == path {
			return true
		}
	}
	return false
}

// rawPanel is just enough of a panel to walk it independently of the SDK's decoder.
type rawPanel struct {
	Type        string            `json:"type"`
	Title       string            `json:"title"`
	FieldConfig json.RawMessage   `json:"fieldConfig"`
	Targets     []json.RawMessage `json:"targets"`
	Panels      []json.RawMessage `json:"panels"`
	Datasource  *struct {
		Type string `json:"type"`
	} `json:"datasource"`
}

// panelExtras closes the SDK decoder's gaps for one panel (and the panels of a row).
func (c *checker) panelExtras(path string, raw json.RawMessage, titles map[string]string) {
	var p rawPanel
	if err := json.Unmarshal(raw, &p); err != nil {
		return // already reported by the strict decoder
	}
	titles[path] = p.Title
	if p.Type == "row" {
		for j, sub := range p.Panels {
			c.panelExtras(fmt.Sprintf("%s.panels[%d]", path, j), sub, titles)
		}
		return
	}
	if _, ok := cog.ConfigForPanelcfgVariant(p.Type); !ok && p.Type != "" {
		c.add(path+".type", fmt.Errorf("panel plugin %q has no schema here, so its options would go unchecked", p.Type))
	}
	// The SDK decodes fieldConfig leniently (unknown keys pass); where that already failed, once is enough.
	if len(p.FieldConfig) > 0 && string(p.FieldConfig) != "null" && !c.reportedAt(path+".fieldConfig") {
		var fc dashboard.FieldConfigSource
		c.add(path+".fieldConfig", fc.UnmarshalJSONStrict(p.FieldConfig))
	}
	panelDS := ""
	if p.Datasource != nil {
		panelDS = p.Datasource.Type
	}
	for j, t := range p.Targets {
		var own struct {
			Datasource *struct {
				Type string `json:"type"`
			} `json:"datasource"`
		}
		_ = json.Unmarshal(t, &own)
		tpath := fmt.Sprintf("%s.targets[%d]", path, j)
		if own.Datasource != nil && own.Datasource.Type != "" {
			if !hasQuerySchema(t, own.Datasource.Type) {
				c.add(tpath+".datasource.type", fmt.Errorf("data source type %q has no query schema here", own.Datasource.Type))
			}
			continue // the SDK's strict decoder checked it against that type
		}
		switch {
		case panelDS == "":
			c.add(tpath, errors.New("no datasource type on the query or the panel, so the query cannot be checked"))
		case !hasQuerySchema(t, panelDS):
			c.add(path+".datasource.type", fmt.Errorf("data source type %q has no query schema here", panelDS))
		default:
			_, err := cog.StrictUnmarshalDataquery(t, panelDS)
			c.add(tpath, err)
		}
	}
}

// hasQuerySchema tells whether the SDK knows the query schema of data source type ds.
func hasQuerySchema(raw json.RawMessage, ds string) bool {
	q, err := cog.UnmarshalDataquery(raw, ds)
	if err != nil {
		return true // a known type that failed to decode: reported by the strict decoder
	}
	_, unknown := q.(variants.UnknownDataquery)
	return !unknown
}

// check returns every problem of one dashboard document, de-duplicated, in document order.
func check(raw []byte) []problem {
	c := &checker{}
	var strict dashboard.Dashboard
	c.add("", strict.UnmarshalJSONStrict(raw))
	var top struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if json.Unmarshal(raw, &top) != nil {
		return c.problems // not a dashboard object at all: the decoder's one error says why
	}
	titles := map[string]string{}
	for i, p := range top.Panels {
		c.panelExtras(fmt.Sprintf("panels[%d]", i), p, titles)
	}
	// The schema's constraints, on a lenient decode: the SDK's strict decoder drops every panel it decodes
	// (PanelOrRowPanel returns its typed-nil error early), so Validate after it would never see a panel.
	// Where the lenient decode fails, the strict decoder has already reported the cause.
	var lenient dashboard.Dashboard
	if json.Unmarshal(raw, &lenient) == nil {
		vc := &checker{}
		vc.add("", lenient.Validate())
		for _, v := range vc.problems {
			// A required field that is missing decodes as zero: "missing" says it already, "must be > 0" is noise.
			if !c.reportedAt(normalise(v.path)) {
				c.problems = append(c.problems, v)
			}
		}
	}
	return annotate(dedupe(c.problems), titles)
}

// dedupe writes every path without type names and drops repeats.
func dedupe(in []problem) []problem {
	seen := map[string]bool{}
	var out []problem
	for _, p := range in {
		p.path = normalise(p.path)
		key := p.path + "\x00" + p.msg
		if !seen[key] {
			seen[key] = true
			out = append(out, p)
		}
	}
	return out
}

// The SDK puts Go type names in its paths ("panels[3].Panel.gridPos", "targets[0].Dataquery: unexpected
// field"); JSON keys of the schema are lowerCamelCase, so a capitalised segment is a type name and is dropped.
var typeSegment = regexp.MustCompile(`(^|\.)[A-Z][A-Za-z0-9]*(\.|$)`)

func normalise(path string) string {
	for {
		next := typeSegment.ReplaceAllString(path, "$1")
		next = strings.TrimSuffix(next, ".")
		if next == path {
			return path
		}
		path = next
	}
}

var panelPath = regexp.MustCompile(`^panels\[\d+\](\.panels\[\d+\])?`)

// annotate names the panel of each problem, since "panels[14]" alone is hard to find in the JSON.
func annotate(in []problem, titles map[string]string) []problem {
	for i, p := range in {
		m := panelPath.FindString(p.path)
		if m == "" {
			continue
		}
		if title, ok := titles[normalise(m)]; ok && title != "" {
			in[i].msg += " (panel " + strconv.Quote(title) + ")"
		}
	}
	return in
}

func sdkVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == sdkModule {
				return dep.Version
			}
		}
	}
	return "(unknown version)"
}

func read(name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(os.Stdin)
	}
	return os.ReadFile(name)
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" {
		fmt.Fprintln(os.Stderr, "usage: dashboard-schema FILE... (- for standard input)")
		os.Exit(2)
	}
	plugins.RegisterDefaultPlugins()
	schema := fmt.Sprintf("%s %s, dashboard schemaVersion %d", sdkModule, sdkVersion(), dashboard.NewDashboard().SchemaVersion)
	status := 0
	for _, name := range os.Args[1:] {
		raw, err := read(name)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
			os.Exit(2)
		}
		problems := check(raw)
		if len(problems) == 0 {
			fmt.Printf("%s: valid against %s\n", name, schema)
			continue
		}
		status = 1
		fmt.Printf("%s: %d problem(s) against %s\n", name, len(problems), schema)
		for _, p := range problems {
			if p.path == "" {
				p.path = "(document)"
			}
			fmt.Printf("  %s: %s\n", p.path, p.msg)
		}
	}
	os.Exit(status)
}
