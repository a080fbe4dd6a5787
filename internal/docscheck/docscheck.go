// Package docscheck reads what the documentation names that a machine can
// check — command-line flags and their defaults, make targets, the worker
// contract's environment variables and exit codes, HTTP routes — so that
// tests can hold README.md and docs/ to the code.
package docscheck

import (
	"fmt"
	"go/ast"
	"go/constant"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Mention is one thing a document names, where it names it.
type Mention struct {
	File string
	Line int
	// Name is the flag (without dashes), target, variable, exit code or
	// route ("GET /path").
	Name string
	// Default is the default a document gives a flag; HasDefault says
	// whether it gives one.
	Default    string
	HasDefault bool
}

func (m Mention) String() string { return fmt.Sprintf("%s:%d: %s", m.File, m.Line, m.Name) }

// A context is a piece of text read as a unit: a line of a fenced code
// block, an inline code span, or a line of prose (which holds its spans).
type context struct {
	text string
	code bool
	line int
	// before is the command a code-block line continues (after a line
	// ending in a backslash).
	before string
}

var inlineCode = regexp.MustCompile("`([^`]+)`")

// contexts splits markdown into code-block lines, inline code spans and
// prose lines.
func contexts(markdown string) []context {
	var out []context
	fenced := false
	continued := ""
	for i, line := range strings.Split(markdown, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced, continued = !fenced, ""
			continue
		}
		if fenced {
			out = append(out, context{text: line, code: true, line: i + 1, before: continued})
			continued = ""
			if strings.HasSuffix(line, "\\") {
				continued = out[len(out)-1].before + strings.TrimSuffix(line, "\\")
			}
			continue
		}
		out = append(out, context{text: line, line: i + 1})
		for _, span := range inlineCode.FindAllStringSubmatch(line, -1) {
			out = append(out, context{text: span[1], code: true, line: i + 1})
		}
	}
	return out
}

// otherPrograms are commands whose flags are not kinfer's.
var otherPrograms = []string{"kubectl", "helm", "curl", "python3", "python", "docker", "openssl", "npm", "node",
	"git", "pip", "base64", "head", "go", "golangci-lint"}

// foreign reports whether the flag at the end of code belongs to another
// program: the last command word before it is one (go run of kinfer's own
// tools, ./hack/..., excepted), or a Python script.
func foreign(code string) bool {
	fields := strings.FieldsFunc(code, func(r rune) bool { return strings.ContainsRune(" \t$();|&", r) })
	for i := len(fields) - 1; i >= 0; i-- {
		word := fields[i]
		switch {
		case word == "go":
			ownTool := i+2 < len(fields) && fields[i+1] == "run" && strings.HasPrefix(fields[i+2], "./")
			return !ownTool
		case slices.Contains(otherPrograms, word) || strings.HasSuffix(word, ".py"):
			return true
		case word == "make" || strings.HasPrefix(word, "bin/") || strings.HasPrefix(word, "hack/"):
			return false
		}
	}
	return false
}

var (
	flagName = regexp.MustCompile(`(?:^|[^\w-])--([a-z][a-z0-9]*(?:[.-][a-z0-9]+)*)`)
	// proseDefault: `--flag` (default `value` or `--flag`, default `value`.
	proseDefault = regexp.MustCompile("`--([a-z][a-z0-9-]*)`,? \\(?default `([^`]*)`")
)

// Flags lists the kinfer flags a document names: in code and prose, but not
// in code that runs another program; with the default a flag table (a
// "flag" and a "default" column) or a phrase "`--flag` (default `value`"
// gives.
func Flags(file, markdown string) []Mention {
	defaults := flagDefaults(markdown)
	var out []Mention
	seen := map[string]bool{}
	for _, c := range contexts(markdown) {
		if !c.code {
			continue
		}
		for _, loc := range flagName.FindAllStringSubmatchIndex(c.text, -1) {
			m := []string{c.text[loc[0]:loc[1]], c.text[loc[2]:loc[3]]}
			if foreign(c.before + c.text[:loc[0]]) {
				continue
			}
			key := fmt.Sprintf("%d/%s", c.line, m[1])
			if seen[key] {
				continue
			}
			seen[key] = true
			mention := Mention{File: file, Line: c.line, Name: m[1]}
			if d, ok := defaults[key]; ok {
				mention.Default, mention.HasDefault = d, true
			}
			out = append(out, mention)
		}
	}
	return out
}

// flagDefaults maps "line/flag" to the default the document gives there.
func flagDefaults(markdown string) map[string]string {
	out := map[string]string{}
	flagCol, defaultCol := -1, -1
	for i, line := range strings.Split(markdown, "\n") {
		for _, m := range proseDefault.FindAllStringSubmatch(line, -1) {
			if d, ok := normalDefault(m[2]); ok {
				out[fmt.Sprintf("%d/%s", i+1, m[1])] = d
			}
		}
		if !strings.HasPrefix(strings.TrimSpace(line), "|") {
			flagCol, defaultCol = -1, -1
			continue
		}
		cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		for j := range cells {
			cells[j] = strings.TrimSpace(cells[j])
		}
		if flagCol < 0 && defaultCol < 0 {
			flagCol, defaultCol = slices.Index(cells, "flag"), slices.Index(cells, "default")
			continue
		}
		if flagCol < 0 || defaultCol < 0 || max(flagCol, defaultCol) >= len(cells) {
			continue
		}
		d, ok := normalDefault(cells[defaultCol])
		if !ok {
			continue
		}
		for _, m := range flagName.FindAllStringSubmatch(cells[flagCol], -1) {
			out[fmt.Sprintf("%d/%s", i+1, m[1])] = d
		}
	}
	return out
}

// normalDefault reads a documented default: the first word, without
// backquotes, before any explanation in parentheses; "none", "empty" and
// "off" are the empty value. A description ("the Pod's namespace") gives no
// value to check.
func normalDefault(cell string) (string, bool) {
	cell = strings.TrimSpace(cell)
	if i := strings.Index(cell, " ("); i >= 0 {
		cell = cell[:i]
	}
	cell = strings.TrimSpace(strings.Trim(cell, "`"))
	switch {
	case cell == "none" || cell == "empty" || cell == "off" || cell == `""`:
		return "", true
	case cell == "" || strings.ContainsAny(cell, " `"):
		return "", false
	}
	return cell, true
}

var targetWord = regexp.MustCompile(`^[a-z][a-z0-9]*(-[a-z0-9]+)*$`)

var makeCommand = regexp.MustCompile(`(?:^\s*(?:\$\s+)?|[;&|(]\s*)make((?:\s+[^\s#;&|)]+)+)`)

// MakeTargets lists the make targets a document's code names: the words
// after "make" up to the first variable, flag or comment.
func MakeTargets(file, markdown string) []Mention {
	var out []Mention
	for _, c := range contexts(markdown) {
		if !c.code {
			continue
		}
		for _, m := range makeCommand.FindAllStringSubmatch(c.text, -1) {
			for _, word := range strings.Fields(m[1]) {
				if !targetWord.MatchString(word) {
					break
				}
				out = append(out, Mention{File: file, Line: c.line, Name: word})
			}
		}
	}
	return out
}

var makeRule = regexp.MustCompile(`(?m)^([A-Za-z0-9_-]+(?:[ \t]+[A-Za-z0-9_-]+)*)[ \t]*:([^=]|$)`)

// MakefileTargets lists the targets a Makefile defines.
func MakefileTargets(makefile string) map[string]bool {
	out := map[string]bool{}
	for _, m := range makeRule.FindAllStringSubmatch(makefile, -1) {
		for _, t := range strings.Fields(m[1]) {
			out[t] = true
		}
	}
	return out
}

var envName = regexp.MustCompile(`\bKINFER_[A-Z0-9]+(?:_[A-Z0-9]+)*\b`)

// EnvNames lists the KINFER_ variables a document names.
func EnvNames(file, markdown string) []Mention {
	var out []Mention
	for i, line := range strings.Split(markdown, "\n") {
		for _, name := range envName.FindAllString(line, -1) {
			out = append(out, Mention{File: file, Line: i + 1, Name: name})
		}
	}
	return out
}

var exitCode = regexp.MustCompile(`(?i)\bexit(?:s|ing)?(?: with)?(?: code)? (\d+)\b`)

// ExitCodes lists the exit codes a document names ("exit 42", "exits 0",
// "exit code 3").
func ExitCodes(file, markdown string) []Mention {
	var out []Mention
	for i, line := range strings.Split(markdown, "\n") {
		for _, m := range exitCode.FindAllStringSubmatch(line, -1) {
			out = append(out, Mention{File: file, Line: i + 1, Name: m[1]})
		}
	}
	return out
}

var route = regexp.MustCompile(`\b(GET|POST|PUT|PATCH|DELETE) (/[A-Za-z0-9_{}./-]*)`)

// Routes lists the HTTP routes a document names, as "METHOD /path"; a
// trailing "..." (a family of routes) is dropped.
func Routes(file, markdown string) []Mention {
	var out []Mention
	for i, line := range strings.Split(markdown, "\n") {
		for _, m := range route.FindAllStringSubmatch(line, -1) {
			path := strings.TrimRight(m[2], ".")
			out = append(out, Mention{File: file, Line: i + 1, Name: m[1] + " " + path})
		}
	}
	return out
}

// FlagSet is what a program's -help says of its flags: each flag's default
// as text ("" for a zero value, which -help leaves out).
type FlagSet map[string]string

var helpFlag = regexp.MustCompile(`^  -([A-Za-z0-9][A-Za-z0-9._-]*)(?: (\w+))?$`)

// ParseHelp reads the flags and defaults from the output of a Go program's
// -help (the flag package's PrintDefaults).
func ParseHelp(help string) FlagSet {
	out := FlagSet{}
	var name, typ string
	var usage strings.Builder
	flush := func() {
		if name == "" {
			return
		}
		out[name] = helpDefault(typ, strings.TrimSpace(usage.String()))
		usage.Reset()
	}
	for _, line := range strings.Split(help, "\n") {
		if m := helpFlag.FindStringSubmatch(line); m != nil {
			flush()
			name, typ = m[1], m[2]
			continue
		}
		if name != "" && strings.HasPrefix(line, "    \t") {
			usage.WriteString(strings.TrimPrefix(line, "    \t") + "\n")
		}
	}
	flush()
	return out
}

var helpDefaultValue = regexp.MustCompile(`\(default (.*)\)$`)

func helpDefault(typ, usage string) string {
	if m := helpDefaultValue.FindStringSubmatch(usage); m != nil {
		if s, err := strconv.Unquote(m[1]); err == nil {
			return s
		}
		return m[1]
	}
	switch typ {
	case "":
		return "false"
	case "int", "uint", "int64", "uint64", "float":
		return "0"
	case "duration":
		return "0s"
	}
	return ""
}

// WorkerContract reads the worker contract from the Go package in dir: the
// values of its string constants that start with KINFER_, and of its Exit
// constants.
func WorkerContract(dir string) (env map[string]bool, exits map[string]bool, err error) {
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, nil, err
	}
	env, exits = map[string]bool{}, map[string]bool{}
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return nil, nil, err
		}
		for _, decl := range f.Decls {
			gen, ok := decl.(*ast.GenDecl)
			if !ok || gen.Tok != token.CONST {
				continue
			}
			for _, spec := range gen.Specs {
				readConstants(spec.(*ast.ValueSpec), env, exits)
			}
		}
	}
	return env, exits, nil
}

func readConstants(spec *ast.ValueSpec, env, exits map[string]bool) {
	for i, name := range spec.Names {
		if i >= len(spec.Values) {
			continue
		}
		lit, ok := spec.Values[i].(*ast.BasicLit)
		if !ok {
			continue
		}
		value := constant.MakeFromLiteral(lit.Value, lit.Kind, 0)
		switch {
		case value.Kind() == constant.String && strings.HasPrefix(constant.StringVal(value), "KINFER_"):
			env[constant.StringVal(value)] = true
		case value.Kind() == constant.Int && strings.HasPrefix(name.Name, "Exit"):
			exits[value.ExactString()] = true
		}
	}
}

// CheckFlags says what is wrong with the flags mentions name: a flag no
// program in sets has (but for help, which every program has, and others,
// flags of programs kinfer runs but does not build), or a default none of
// the programs with that flag has.
func CheckFlags(mentions []Mention, sets map[string]FlagSet, others []string) []string {
	var problems []string
	for _, m := range mentions {
		if m.Name == "help" || slices.Contains(others, m.Name) {
			continue
		}
		var defaults []string
		for _, set := range sets {
			if d, ok := set[m.Name]; ok {
				defaults = append(defaults, d)
			}
		}
		switch {
		case len(defaults) == 0:
			problems = append(problems, fmt.Sprintf("%s:%d: --%s is no flag of the manager, the local stack or the bench",
				m.File, m.Line, m.Name))
		case m.HasDefault && !slices.Contains(defaults, m.Default):
			slices.Sort(defaults)
			problems = append(problems, fmt.Sprintf("%s:%d: --%s is said to default to %q, but its default is %q",
				m.File, m.Line, m.Name, m.Default, strings.Join(defaults, `" or "`)))
		}
	}
	return problems
}

// CheckNames says which mentions name nothing in known, calling them what.
func CheckNames(mentions []Mention, known map[string]bool, what string) []string {
	var problems []string
	for _, m := range mentions {
		if !known[m.Name] {
			problems = append(problems, fmt.Sprintf("%s:%d: %s %s does not exist", m.File, m.Line, what, m.Name))
		}
	}
	return problems
}

var pathParameter = regexp.MustCompile(`\{[^}/]*\}`)

// CheckRoutes says which routes mentions name that served does not serve;
// each {parameter} in a path is given the value "x".
func CheckRoutes(mentions []Mention, served func(method, path string) bool) []string {
	var problems []string
	for _, m := range mentions {
		method, path, _ := strings.Cut(m.Name, " ")
		if !served(method, pathParameter.ReplaceAllString(path, "x")) {
			problems = append(problems, fmt.Sprintf("%s:%d: %s is not served", m.File, m.Line, m.Name))
		}
	}
	return problems
}
