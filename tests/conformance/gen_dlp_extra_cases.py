"""Writes dlp_extra_cases.jsonl: more DLP cases of the public kinds, derived from the same
   specifications (ISO/IEC 7812 brand ranges and lengths with Luhn, SSA never-issued SSN ranges,
   ISO 13616 per-country BBAN shapes with mod-97, RFC 5322 local parts, RFC 6750 tokens), with a
   fixed seed. Run: python3 tests/conformance/gen_dlp_extra_cases.py"""
import json, random
random.seed(7)
def luhn_complete(prefix, length):
    digits=[int(c) for c in prefix]
    while len(digits)<length-1: digits.append(random.randint(0,9))
    for d in range(10):
        cand=digits+[d]
        s=0
        for i,x in enumerate(reversed(cand)):
            if i%2==1:
                x*=2
                if x>9: x-=9
            s+=x
        if s%10==0: return ''.join(map(str,cand))
def luhn_ok(n):
    s=0
    for i,x in enumerate(reversed([int(c) for c in n])):
        if i%2==1:
            x*=2
            if x>9:x-=9
        s+=x
    return s%10==0
MASK=[{"type":"cardNumber","action":"Mask","keepLast":4}]
cases=[]
def resp(id,cat,det,body,expect,secrets,keep,ct="application/json",chunk=0):
    cases.append(dict(id=id,category=cat,direction="response",detectors=det,method="GET",target="/",content_type=ct,body=body,chunk=chunk,expect=expect,secrets=secrets,keep=keep))
def req(id,cat,det,method,target,body,expect,secrets,keep,ct="application/json",chunk=0):
    cases.append(dict(id=id,category=cat,direction="request",detectors=det,method=method,target=target,content_type=ct,body=body,chunk=chunk,expect=expect,secrets=secrets,keep=keep))
brands=[("visa13","4",13),("visa19","4",19),("mc55","55",16),("mc2221","2221",16),("mc2720","2720",16),("amex34","34",15),
("disc644","644",16),("disc649","649",16),("disc622126","622126",16),("disc6011-19","6011",19),("disc65-19","65",19),("jcb3528","3528",16),("jcb3589-19","3589",19),
("diners300","300",14),("diners305","305",14),("diners38","38",14),("diners39","39",14),("diners36-16","36",16)]
def group(n,sizes,sep):
    out=[];i=0
    for s in sizes:
        out.append(n[i:i+s]); i+=s
    if i<len(n): out.append(n[i:])
    return sep.join(out)
for name,p,l in brands:
    n=luhn_complete(p,l)
    o="ORD-%08d"%random.randint(0,99999999)
    resp(f"x-card-{name}-plain","card",MASK,json.dumps({"order":o,"card":n}),"masked",[n],[o])
    sizes=[4,6,5] if l==15 else ([4,6,4] if l==14 else [4,4,4,4,4])
    resp(f"x-card-{name}-space","card",MASK,json.dumps({"order":o,"card":group(n,sizes," ")}),"masked",[n],[o])
    resp(f"x-card-{name}-dash","card",MASK,"card: "+group(n,sizes,"-")+"\nthanks "+o,"masked",[n],[o],ct="text/plain")
# negatives
for i in range(8):
    while True:
        n=luhn_complete(random.choice(["4","51","37","6011","3530"]), random.choice([15,16]))
        n=n[:-1]+str((int(n[-1])+1+random.randint(0,8))%10)
        if not luhn_ok(n): break
    resp(f"x-card-neg-luhn-{i}","card-negative",MASK,json.dumps({"id":n,"ref":"ref "+n}),"unchanged",[],[n])
for i,p in enumerate(["1","7","8","9","0"]):
    n=luhn_complete(p,16)
    resp(f"x-card-neg-prefix-{i}","card-negative",MASK,json.dumps({"id":n}),"unchanged",[],[n])
for i,ts in enumerate(["1700000000000","1733356800123","2024-12-05T10:11:12.123456789Z","20241205101112123"]):
    resp(f"x-card-neg-time-{i}","card-negative",MASK,json.dumps({"at":ts,"v":"1.2.3.4"}),"unchanged",[],[ts])
resp("x-card-neg-uuid","card-negative",MASK,json.dumps({"id":"550e8400-e29b-41d4-a716-446655440000"}),"unchanged",[],["550e8400-e29b-41d4-a716-446655440000"])
resp("x-card-neg-ip-dotted","card-negative",MASK,"from 4111.1111.1111.1111 via 10.0.0.1","unchanged",[],["4111.1111.1111.1111"],ct="text/plain")
# stream
for c in [1,2,5,11,16,64,1000]:
    a=luhn_complete("4",16); b=luhn_complete("53",16); d=luhn_complete("37",15)
    body="first "+group(a,[4,4,4,4]," ")+" "+"y"*(c*7%300)+" "+b+" and "+group(d,[4,6,5],"-")+" end"
    resp(f"x-card-chunked-{c}","card-stream",MASK,body,"masked",[a,b,d],["first "," end"],ct="text/plain",chunk=c)
a=luhn_complete("6011",16)
body="lorem ipsum "*20000+a+" tail"
resp("x-card-deep-240k","card-stream",MASK,body,"masked",[a],[" tail"],ct="text/plain",chunk=8192)
resp("x-card-json-chunked-5","card-stream",MASK,json.dumps({"pad":"z"*9000,"card":group(a,[4,4,4,4]," ")}),"masked",[a],['"pad"'],chunk=5)
# block in responses
for i,p in enumerate(["4","5425","3782"]):
    n=luhn_complete(p,15 if p=="3782" else 16)
    resp(f"x-card-block-{i}","card-block",[{"type":"cardNumber","action":"Block"}],json.dumps({"pan":n}) if i else "pan "+n,"blocked",[n],[],ct="application/json" if i else "text/plain")
# requests
BLOCK=[{"type":"cardNumber","action":"Block"}]
n=luhn_complete("4",16)
req("x-req-text","request-card",BLOCK,"POST","/notes","note: pay with "+group(n,[4,4,4,4],"-"),"blocked",[n],[],ct="text/plain")
n=luhn_complete("5",16)
req("x-req-query-dash","request-card",BLOCK,"GET","/pay?a=1&pan="+group(n,[4,4,4,4],"-"),"","blocked",[n],[],ct="")
req("x-req-query-pct2d","request-card",BLOCK,"GET","/pay?pan="+group(n,[4,4,4,4],"%2D"),"","blocked",[n],[],ct="")
req("x-req-path","request-card",BLOCK,"GET","/cards/"+n+"/charge","","blocked",[n],[],ct="")
req("x-req-put-json-chunked","request-card",BLOCK,"PUT","/","{\"a\":\"b\",\"card\":\""+group(n,[4,4,4,4]," ")+"\"}","blocked",[n],[],chunk=3)
req("x-req-form-pct","request-card",BLOCK,"POST","/","pan="+group(n,[4,4,4,4],"%20")+"&x=1","blocked",[n],[],ct="application/x-www-form-urlencoded")
req("x-req-json-escaped","request-card",BLOCK,"POST","/","{\"card\":\""+"".join("\\u%04x"%ord(c) for c in n[:4])+n[4:]+"\"}","blocked",[n],[])
o=luhn_complete("9",16)
req("x-req-neg-order","request-negative",BLOCK,"POST","/orders?id="+o,json.dumps({"order":o,"ts":"1700000000000"}),"unchanged",[],[o])
req("x-req-neg-text","request-negative",BLOCK,"POST","/","version 4.1.1.1 build 4111111111111112","unchanged",[],["4111111111111112"],ct="text/plain")
n=luhn_complete("4",16)
req("x-req-mask-json","request-card",MASK,"POST","/",json.dumps({"keep":"yes","card":n}),"masked",[n],['"keep": "yes"'])
# ssn
ALL=[{"type":"cardNumber","action":"Mask","keepLast":4},{"type":"usSsn","action":"Redact"},{"type":"iban","action":"Mask","keepLast":4},{"type":"email","action":"Mask"},{"type":"bearerToken","action":"Redact"}]
SSN=[{"type":"usSsn","action":"Redact"}]
for i,s in enumerate(["123-45-6789","899-99-9999","001-01-0001","665 12 3456","772-10-0123"]):
    resp(f"x-ssn-valid-{i}","ssn",ALL if i%2 else SSN,f"person {i}: ssn {s}; ok","masked",[s.replace(' ','').replace('-','')],["; ok"],ct="text/plain")
for i,s in enumerate(["666-12-3456","900-12-3456","999-99-9999","123-00-4567","123-45-0000","000-00-0000"]):
    resp(f"x-ssn-reserved-{i}","ssn-negative",SSN,f"value {s} end","unchanged",[],[s],ct="text/plain")
# iban
import string
def iban(cc,bban):
    r=bban+cc+"00"
    num=''.join(str(int(ch,36)) for ch in r)
    chk=98-int(num)%97
    return cc+"%02d"%chk+bban
def bad(i):
    c=int(i[2:4]); c2=(c+random.randint(1,50))%97
    if c2<2:c2+=2
    return i[:2]+"%02d"%c2+i[4:]
specs={"ES":"20n","IT":"1a10n12c","BE":"12n","CH":"5n12c","AT":"16n","PL":"24n","PT":"21n","SE":"20n","NO":"11n","DK":"14n","FI":"14n","IE":"4a14n","LU":"3n13c","SA":"2n18c","MT":"4a5n18c","BR":"23n1a1c","CZ":"20n","HU":"24n","GR":"7n16c","SK":"20n"}
import re
def gen(spec):
    out=""
    for cnt,kind in re.findall(r"(\d+)([nac])",spec):
        for _ in range(int(cnt)):
            out+=random.choice({"n":string.digits,"a":string.ascii_uppercase,"c":string.ascii_uppercase+string.digits}[kind])
    return out
IB=[{"type":"iban","action":"Mask","keepLast":4}]
for cc,spec in specs.items():
    i=iban(cc,gen(spec))
    printed=" ".join(i[k:k+4] for k in range(0,len(i),4))
    if cc in ("ES","IT","CH","PL","IE","MT"):
        resp(f"x-iban-{cc}-printed","iban",IB,f"IBAN: {printed}\nBIC: ABCDEFGH","masked",[i],["BIC: ABCDEFGH"],ct="text/plain")
    else:
        resp(f"x-iban-{cc}","iban",IB,json.dumps({"iban":i,"bic":"ABCDEFGH"}),"masked",[i],["ABCDEFGH"])
    b=bad(i)
    resp(f"x-iban-{cc}-bad","iban-negative",IB,json.dumps({"iban":b}),"unchanged",[],[b])
# email
EM=[{"type":"email","action":"Mask"}]
for k,e in enumerate(["first.last@example.co.uk","x@y.io","user_name-1@sub.domain.example","a.b+c@xn--bcher-kva.example","UPPER@EXAMPLE.COM","o'neil@example.ie","jo!hn#x@example.com","a{b}|c~d@example.net"]):
    resp(f"x-email-{k}","email",EM,f"reach: {e}, thanks","masked",[e],["reach: ",", thanks"],ct="text/plain")
# bearer
BR=[{"type":"bearerToken","action":"Redact"}]
resp("x-bearer-opaque","bearer",BR,"Authorization: Bearer mF_9.B5f-4.1JqM\r\nok","masked",["mF_9.B5f-4.1JqM"],["ok"],ct="text/plain")
resp("x-bearer-b64","bearer",BR,json.dumps({"h":"bearer dGhpcyBpcyBhIHNlY3JldCB0b2tlbg==","n":1}),"masked",["dGhpcyBpcyBhIHNlY3JldCB0b2tlbg=="],['"n": 1'])
jwt="eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MTcwMDAwMDAwMH0.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU"
resp("x-bearer-bare-jwt","bearer",BR,json.dumps({"token":jwt,"ok":True}),"masked",[jwt],['"ok": true'])
# custom
resp("x-custom-nogroup","custom",[{"type":"custom","name":"secret-key","pattern":"sk_live_[A-Za-z0-9]{16}","action":"Redact"}],"key=sk_live_ABCDEFGH12345678 end","masked",["sk_live_ABCDEFGH12345678"],["key="," end"],ct="text/plain")
resp("x-custom-block","custom",[{"type":"custom","name":"project","pattern":"PRJ-(?P<value>[0-9]{4})","action":"Block"}],"see PRJ-1234","blocked",["PRJ-1234"],[],ct="text/plain")
resp("x-custom-neg","custom",[{"type":"custom","name":"employee-id","pattern":"EMP-(?P<value>\\d{6})","action":"Mask"}],"badge EMP-12345 only five","unchanged",[],["EMP-12345"],ct="text/plain")
with open(__import__("os").path.join(__import__("os").path.dirname(__file__),"dlp_extra_cases.jsonl"),"w") as f:
    for c in cases: f.write(json.dumps(c)+"\n")
print(len(cases))
