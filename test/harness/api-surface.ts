/**
 * The public surface of a TypeScript module, read with the TypeScript compiler API: its exported names, and for each
 * exported class or interface the members a user can reach (public and protected, static ones as `static x`; `#`
 * and `private` members left out). The same reader parses a block of declarations from the docs, so the two can be
 * compared (test/unit/sdk-surface.test.ts).
 */
import ts from "typescript";

export interface Surface {
  /** Exported name -> its kind ("class", "interface", "function", "type", "enum", "const"). */
  kinds: Map<string, string>;
  /** Class or interface name -> its reachable members, sorted. */
  members: Map<string, string[]>;
}

/** The surface of a module file, as its importers see it (re-exports followed). */
export function moduleSurface(file: string, options: ts.CompilerOptions): Surface {
  const program = ts.createProgram([file], { ...options, noEmit: true });
  const checker = program.getTypeChecker();
  const source = program.getSourceFile(file);
  if (!source) throw new Error(`${file}: not in the program`);
  const moduleSymbol = checker.getSymbolAtLocation(source);
  if (!moduleSymbol) throw new Error(`${file}: not a module`);
  const surface: Surface = { kinds: new Map(), members: new Map() };
  for (const exported of checker.getExportsOfModule(moduleSymbol)) {
    const symbol = exported.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(exported) : exported;
    for (const decl of symbol.declarations ?? []) addDeclaration(surface, exported.name, decl);
  }
  return surface;
}

/** The surface a block of declarations (the docs' API listing) describes: every top-level declaration is an export. */
export function declarationsSurface(text: string): Surface {
  const source = ts.createSourceFile("api.d.ts", text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const surface: Surface = { kinds: new Map(), members: new Map() };
  for (const stmt of source.statements) {
    if (ts.isVariableStatement(stmt)) {
      for (const d of stmt.declarationList.declarations) addDeclaration(surface, d.name.getText(), d);
      continue;
    }
    const name = (stmt as ts.DeclarationStatement).name;
    if (!name) throw new Error(`the API listing has a statement that declares nothing: ${stmt.getText().slice(0, 80)}`);
    addDeclaration(surface, name.getText(), stmt);
  }
  return surface;
}

function addDeclaration(surface: Surface, name: string, decl: ts.Node): void {
  if (ts.isClassDeclaration(decl)) {
    surface.kinds.set(name, "class");
    surface.members.set(name, memberNames(decl.members));
  } else if (ts.isInterfaceDeclaration(decl)) {
    surface.kinds.set(name, "interface");
    surface.members.set(name, memberNames(decl.members));
  } else if (ts.isFunctionDeclaration(decl)) {
    surface.kinds.set(name, "function");
  } else if (ts.isTypeAliasDeclaration(decl)) {
    surface.kinds.set(name, "type");
  } else if (ts.isEnumDeclaration(decl)) {
    surface.kinds.set(name, "enum");
  } else if (ts.isVariableDeclaration(decl)) {
    surface.kinds.set(name, "const");
  } else if (ts.isModuleDeclaration(decl)) {
    /* a namespace merged with an enum or function: nothing of its own */
  } else {
    throw new Error(`${name}: unexpected declaration kind ${ts.SyntaxKind[decl.kind]}`);
  }
}

function memberNames(members: ts.NodeArray<ts.ClassElement | ts.TypeElement>): string[] {
  const names = new Set<string>();
  for (const m of members) {
    if (ts.isConstructorDeclaration(m) || ts.isClassStaticBlockDeclaration(m) || ts.isIndexSignatureDeclaration(m)) {
      continue;
    }
    if (ts.isCallSignatureDeclaration(m) || ts.isConstructSignatureDeclaration(m) || ts.isSemicolonClassElement(m)) {
      continue;
    }
    const name = m.name;
    if (!name || ts.isPrivateIdentifier(name)) continue;
    const mods = ts.canHaveModifiers(m) ? (ts.getModifiers(m) ?? []) : [];
    if (mods.some((x) => x.kind === ts.SyntaxKind.PrivateKeyword)) continue;
    const prefix =
      (mods.some((x) => x.kind === ts.SyntaxKind.StaticKeyword) ? "static " : "") +
      (mods.some((x) => x.kind === ts.SyntaxKind.ProtectedKeyword) ? "protected " : "");
    names.add(prefix + name.getText());
  }
  return [...names].sort();
}
