// Renders an exported Ollama Modelfile's TEMPLATE as Ollama renders a chat request, with Go's text/template
// (the engine Ollama runs templates on), and compares it with the prompt our Jinja chat template renders
// for the same conversation. For scripts/export-check.sh.
//
//	go run scripts/modelfile_render.go <Modelfile> <chats.json>
//
// chats.json: [{"messages": [{"role", "content"}], "want": "<our prompt>"}]. Ollama's data for a chat
// request: .Messages, with the Modelfile's SYSTEM put first when the request has no system message.
// Prints one line per conversation on stderr and "<equal> <total>" on stdout; exits 1 when a prompt
// differs.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type chat struct {
	Messages []message `json:"messages"`
	Want     string    `json:"want"`
}

// block returns the text of `KEY """..."""` in a Modelfile.
func block(modelfile, key string) (string, bool) {
	open := key + ` """`
	i := strings.Index(modelfile, open)
	if i < 0 || (i > 0 && modelfile[i-1] != '\n') {
		return "", false
	}
	rest := modelfile[i+len(open):]
	j := strings.Index(rest, `"""`)
	if j < 0 {
		return "", false
	}
	return rest[:j], true
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: modelfile_render <Modelfile> <chats.json>")
		os.Exit(2)
	}
	mf, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	raw, err := os.ReadFile(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var chats []chat
	if err := json.Unmarshal(raw, &chats); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	text, ok := block(string(mf), "TEMPLATE")
	if !ok {
		// left to Ollama's own template for the GGUF's chat template: nothing of ours to compare
		fmt.Fprintf(os.Stderr, "%s: no TEMPLATE (Ollama's own for this chat template)\n", os.Args[1])
		fmt.Println("0 0")
		return
	}
	system, hasSystem := block(string(mf), "SYSTEM")
	tmpl, err := template.New("modelfile").Parse(text)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: TEMPLATE does not parse: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	equal := 0
	for _, c := range chats {
		msgs := c.Messages
		if hasSystem && (len(msgs) == 0 || msgs[0].Role != "system") {
			msgs = append([]message{{Role: "system", Content: system}}, msgs...)
		}
		var b strings.Builder
		if err := tmpl.Execute(&b, map[string]any{"Messages": msgs}); err != nil {
			fmt.Fprintf(os.Stderr, "%s: TEMPLATE fails: %v\n", os.Args[1], err)
			os.Exit(1)
		}
		if b.String() == c.Want {
			equal++
			fmt.Fprintf(os.Stderr, "%s: %d messages: the same prompt\n", os.Args[1], len(c.Messages))
		} else {
			fmt.Fprintf(os.Stderr, "%s: %d messages differ:\n  ollama: %q\n  ours:   %q\n", os.Args[1], len(c.Messages), b.String(), c.Want)
		}
	}
	fmt.Printf("%d %d\n", equal, len(chats))
	if equal != len(chats) {
		os.Exit(1)
	}
}
